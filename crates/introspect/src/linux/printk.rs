//! The printk ring buffer (Linux ≥ 5.10), read from guest memory as dmesg records.
