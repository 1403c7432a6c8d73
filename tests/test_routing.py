"""One table for "routed ⇒ handled", per architecture.

For every feature of routing.FEATURES, on the x86_64 and the aarch64
syscall tables: each syscall the plan routes to the supervisor for that
feature gets a handler from supervisor/spare.builtin_handlers, and nothing
is handled that is not routed. The supervisor refuses to start on a routed
syscall without a handler; these tests keep that from ever happening.
"""
from __future__ import annotations

import os

import pytest

from sandlock import fsview, routing
from sandlock._kernel import syscalls
from sandlock.cow.branch import Branch
from sandlock.launch import launch_message
from sandlock.netplan import plan_network
from sandlock.plan import compile_plan
from sandlock.policy.model import Policy
from sandlock.policy.netrules import parse_rules
from sandlock.policy.policyfn import HOLDABLE, NAMES, PolicyFnPlan
from sandlock.policy.ports import parse_port_specs
from sandlock.supervisor import spare

ARCHES = ("x86_64", "aarch64")

# Policies that together turn every feature on.
POLICIES = {
    "plain": Policy(fs_readable=("/usr",)),
    "proc_and_limits": Policy(fs_readable=("/usr", "/proc"), max_memory=1 << 30, max_processes=8,
                              num_cpus=1),
    "remap": Policy(fs_readable=("/usr",), port_remap=True,
                    net_deny_bind=parse_port_specs([22], "net_deny_bind")),
    "hosts": Policy(fs_readable=("/usr", "/etc"), fs_denied=("/etc/ssh",),
                    net_allow=parse_rules(["localhost:80"], "net_allow")),
    # a copy-on-write workdir (no run happens: any existing directory will do)
    "cow": Policy(fs_readable=("/usr",), workdir="/usr/share"),
    # deterministic runs, beside /proc's listings and max_memory's brk
    "deterministic": Policy(fs_readable=("/usr", "/proc"), random_seed=1, time_start=0,
                            deterministic_dirs=True, max_memory=1 << 30),
    "deterministic_alone": Policy(fs_readable=("/usr",), random_seed=1, time_start=0,
                                  deterministic_dirs=True),
    # policy_fn, asked about everything it can be asked about
    "policy_fn": Policy(fs_readable=("/usr",), policy_fn=PolicyFnPlan(
        tuple(HOLDABLE), tuple(n for n in NAMES if n not in HOLDABLE), 5.0)),
    # sandlock learn: everything observed, ahead of the copy-on-write layer
    "learn": Policy(fs_readable=("/usr",), workdir="/usr/share", learn=True),
    # chroot: every path syscall resolved in the virtual tree
    "chroot": Policy(fs_readable=("/",), chroot=("/usr", (), (), False)),
    # a copy-on-write workdir inside the chroot: the tree's handlers, the branch's listings
    "chroot_cow": Policy(fs_readable=("/",), chroot=("/usr", (), (), False), workdir="/usr/share"),
}


def routes_for(policy: Policy, table) -> dict:
    view = fsview.policy_view(policy.fs_readable, policy.fs_writable, policy.fs_denied)
    proc = view.may_list("/proc")
    net = plan_network(policy)
    view = fsview.resolve(view, ())
    return routing.routes(routing.features(policy, proc, net, view), table)


def test_every_feature_is_exercised():
    on = set()
    for policy in POLICIES.values():
        on |= routes_for(policy, syscalls.table()).keys()
    assert on == set(routing.FEATURES)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_routed_means_handled(arch, name):
    table = syscalls.table_for(arch)
    policy = POLICIES[name]
    routes = routes_for(policy, table)
    plan = compile_plan(policy, ["/bin/true"])
    branch = Branch.create(plan.cow[0], plan.cow[1]) if plan.cow else None
    supervisor = launch_message(plan, None, 0o022, True,
                                branch_dir=branch.branch_dir if branch else None).supervisor
    supervisor.routes = routes  # this arch's routes
    cleanup: list = []
    try:
        handled, _memory = spare.builtin_handlers(supervisor, os.getpid(), nrs=table.syscalls,
                                                  cleanup=cleanup)
    finally:
        for item in cleanup:
            item.close() if hasattr(item, "close") else os.close(item)
        if branch is not None:
            branch.abort()
    routed = {table.syscalls[n] for names in routes.values() for n in names}
    assert set(handled) == routed
    for feature, names in routes.items():
        for n in names:
            assert handled[table.syscalls[n]], (arch, feature, n)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_routed_syscall_without_handler_refuses_to_start(arch):
    table = syscalls.table_for(arch)
    supervisor = launch_message(compile_plan(POLICIES["plain"], ["/bin/true"]), None, 0o022, True).supervisor
    supervisor.routes = dict(routes_for(POLICIES["plain"], table), network=("connect", "ptrace"))
    with pytest.raises(spare.MissingHandler, match="ptrace"):
        spare.builtin_handlers(supervisor, os.getpid(), nrs=table.syscalls)


def test_the_plan_routes_what_the_table_says():
    plan = compile_plan(POLICIES["proc_and_limits"], ["/bin/true"])
    assert plan.routes == routes_for(POLICIES["proc_and_limits"], syscalls.table())
    assert set(routing.dispatch_notify(plan.routes)) <= set(plan.notify)
