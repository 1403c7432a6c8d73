"""The supervisor: a process of its own, outside the sandbox, that launches
the child, tracks every task of the sandbox and decides routed syscalls."""
