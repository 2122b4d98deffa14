#!/bin/sh
# Rebuilds the small C fixtures of the DWARF reader's tests (committed, so that tests
# need no C compiler). Run from this directory: sh build.sh
set -eu
for v in 2 4 5; do
	gcc -g -gdwarf-$v -O0 -fno-pie -no-pie -static -nostdlib -fno-asynchronous-unwind-tables \
		-Wl,--build-id=sha1 -o c-dwarf$v.elf types_a.c types_b.c
done
# DWARF 4 with compressed sections, both styles.
objcopy --compress-debug-sections=zlib c-dwarf4.elf c-dwarf4-zlib.elf
objcopy --compress-debug-sections=zlib-gnu c-dwarf4.elf c-dwarf4-zlib-gnu.elf
# Line programs and inlined subroutines (scale() in middle() in outer()).
gcc -g -gdwarf-5 -O2 -fno-pie -no-pie -static -nostdlib -fno-asynchronous-unwind-tables \
	-fno-inline-functions-called-once -fdebug-prefix-map="$PWD"=. -Wl,--build-id=sha1 -o c-lines.elf lines.c
