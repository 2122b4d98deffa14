#!/bin/sh
# ambulance-register.sh [TTY] — tells Ambulance, on the host, where this Linux kernel's
# VMCOREINFO note is, so that a live diagnosis of this guest finds the kernel's symbols
# and layouts without scanning its RAM. Runs under busybox sh (and any POSIX sh with
# `read -t`); needs /sys/kernel/vmcoreinfo (CONFIG_CRASH_CORE) and a serial port that
# QEMU connects to Ambulance's registration socket, e.g.
#
#   -chardev socket,id=amb,path=/run/ambulance/GUEST.reg,reconnect=1
#   -device isa-serial,chardev=amb                       # the guest's /dev/ttyS1
#
# TTY defaults to /dev/ttyS1 (a bare name such as ttyS1 means /dev/ttyS1). It sends
#
#   AMBULANCE-REGISTER v1 vmcoreinfo=<hex address> size=<hex size> release=<uname -r>
#
# and waits for `AMBULANCE-ACK v1 …` (or `AMBULANCE-REFUSED v1 <reason>`), sending again
# when nothing answers (the host may not be connected yet). It says on stdout what it
# registered, or why it could not, and exits 0 only when the host acknowledged.
# Environment: AMBULANCE_REGISTER_ATTEMPTS (default 5), AMBULANCE_REGISTER_TIMEOUT
# (seconds per attempt, default 2).

me=ambulance-register
tty=${1:-/dev/ttyS1}
case "$tty" in
    /*) ;;
    *) tty=/dev/$tty ;;
esac
attempts=${AMBULANCE_REGISTER_ATTEMPTS:-5}
timeout=${AMBULANCE_REGISTER_TIMEOUT:-2}
info=/sys/kernel/vmcoreinfo

fail() {
    echo "$me: $*; not registered"
    exit 1
}

is_hex() {
    case "$1" in
        '' | *[!0-9a-fA-F]*) return 1 ;;
        *) return 0 ;;
    esac
}

[ -r "$info" ] || fail "cannot read $info (a kernel without CONFIG_CRASH_CORE?)"
read -r pa size rest < "$info" || fail "$info is empty"
# "%pa %x": the address with 0x, the size without.
pa=${pa#0x}
size=${size#0x}
is_hex "$pa" && is_hex "$size" && [ -z "$rest" ] ||
    fail "$info says \"$(cat "$info")\", not \"<hex address> <hex size>\""
release=$(uname -r)
[ -n "$release" ] || fail "uname -r says nothing"
line="AMBULANCE-REGISTER v1 vmcoreinfo=$pa size=$size release=$release"

[ -c "$tty" ] || fail "$tty is not a character device (is the registration serial port configured?)"
# Raw and without echo: the host's answer must not come back to it, nor lines be rewritten.
stty -F "$tty" raw -echo 2>/dev/null || echo "$me: cannot set $tty raw (stty); trying anyway"
exec 3<>"$tty" || fail "cannot open $tty"

cr=$(printf '\r')
i=1
while [ "$i" -le "$attempts" ]; do
    printf '%s\n' "$line" >&3 || fail "cannot write to $tty"
    while read -t "$timeout" -r answer <&3; do
        answer=${answer%"$cr"}
        case "$answer" in
            "AMBULANCE-ACK v1 "*)
                exec 3<&-
                echo "$me: registered with Ambulance over $tty: VMCOREINFO note at 0x$pa ($((0x$size)) bytes), kernel $release"
                exit 0
                ;;
            "AMBULANCE-REFUSED v1 "*)
                exec 3<&-
                fail "Ambulance refused the registration: ${answer#AMBULANCE-REFUSED v1 }"
                ;;
        esac
    done
    i=$((i + 1))
done
exec 3<&-
fail "no answer from Ambulance on $tty after $attempts attempts (is the port connected to its registration socket?)"
