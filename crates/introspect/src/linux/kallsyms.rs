//! The kernel's kallsyms table, decoded from guest memory.
