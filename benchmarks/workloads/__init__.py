"""The workload registry: name -> function(Settings) -> Row, in table order."""
from __future__ import annotations

from typing import Callable

from ..core import Row, Settings
from . import build, chroot, compose, cow, determinism, fork, fresh, handlers, httpacl, launch, net, policy

WORKLOADS: dict[str, Callable[[Settings], Row]] = {
    "launch_true": launch.launch_true,
    "launch_true_b2b": launch.launch_true_b2b,
    "launch_true_4threads": launch.launch_true_4threads,
    "cli_true": fresh.cli_true,
    "first_run": fresh.first_run,
    "python_pass": launch.python_pass,
    "fork_wait_300": fork.fork_wait_300,
    "fork_wait_300_busy": fork.fork_wait_300_busy,
    "connect_1000": net.connect_1000,
    "tcp_256mib": net.tcp_256mib,
    "http_keepalive_1000": httpacl.http_keepalive_1000,
    "http_newconn_200": httpacl.http_newconn_200,
    "https_first_leaf": httpacl.https_first_leaf,
    "https_cached_leaf": httpacl.https_cached_leaf,
    "compileall": build.compileall,
    "python_pass_deterministic": determinism.python_pass_deterministic,
    "compileall_sorted_dirs": determinism.compileall_sorted_dirs,
    "python_pass_chroot": chroot.python_pass_chroot,
    "python_pass_chroot_cow": chroot.python_pass_chroot_cow,
    "cow_compileall_commit": cow.cow_compileall_commit,
    "cow_compileall_abort": cow.cow_compileall_abort,
    "cow_git_clone": cow.cow_git_clone,
    "cow_dry_run": cow.cow_dry_run,
    "pipeline_true2": compose.pipeline_true2,
    "pipeline_50m": compose.pipeline_50m,
    "fork_1000": compose.fork_1000,
    "notify_roundtrip": handlers.notify_roundtrip,
    "getpid_10000": handlers.getpid_10000,
    "policy_fn_open_2000": policy.policy_fn_open_2000,
    "policy_fn_open_observe": policy.policy_fn_open_observe,
    "policy_fn_connect_300": policy.policy_fn_connect_300,
    "policy_fn_unheld_while_held": policy.policy_fn_unheld_while_held,
    "policy_fn_busy_caller": policy.policy_fn_busy_caller,
}
