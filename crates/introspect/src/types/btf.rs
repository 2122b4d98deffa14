//! BTF (BPF Type Format) as a [`TypeSource`](super::TypeSource).
