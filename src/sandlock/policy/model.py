"""The validated, normalized policy: what every later stage reads.

`normalize(sandbox)` checks every field of a Sandbox and returns a frozen
Policy, or raises PolicyError naming the first bad field. It never touches
the kernel.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import protections
from ..exceptions import PolicyError
from . import determinism, sizes, syscall_groups, values
from .ports import PortSet, parse_port_specs

DEFAULT_MAX_PROCESSES = 64


class BranchAction(enum.Enum):
    """What happens to a workdir's copy-on-write branch when the sandbox ends.
    `on_exit` / `on_error` also accept the values as strings ("commit", ...)."""
    COMMIT = "commit"
    ABORT = "abort"
    KEEP = "keep"
    DEFER = "defer"  # keep the branch until Sandbox.commit() / abort()


@dataclass(frozen=True)
class Policy:
    fs_readable: tuple[str, ...] = ()
    fs_writable: tuple[str, ...] = ()
    fs_denied: tuple[str, ...] = ()
    net_allow: tuple = ()   # parsed netrules.NetRule objects (parsed once, here)
    net_deny: tuple = ()
    net_allow_bind: PortSet = PortSet()
    net_deny_bind: PortSet = PortSet()
    port_remap: bool = False
    extra_deny_syscalls: tuple[str, ...] = ()
    extra_allow_syscalls: tuple[str, ...] = ()
    max_memory: int | None = None
    max_processes: int | None = DEFAULT_MAX_PROCESSES
    max_open_files: int | None = None
    max_cpu: int | None = None
    cpu_cores: tuple[int, ...] | None = None
    num_cpus: int | None = None
    env: dict = field(default_factory=dict)
    clean_env: bool = False
    cwd: str | None = None
    no_coredump: bool = False
    no_huge_pages: bool = False
    no_randomize_memory: bool = False
    no_supervisor: bool = False
    name: str | None = None
    # The copy-on-write workdir (canonical), where its branches go, its quota.
    workdir: str | None = None
    fs_storage: str | None = None
    max_disk: int | None = None
    on_exit: BranchAction = BranchAction.COMMIT
    on_error: BranchAction = BranchAction.ABORT
    # (uid, gid) the command sees, when they differ from ours: a user namespace
    ids: tuple[int, int] | None = None
    # Landlock protections the caller lets degrade on an older kernel, or turns off.
    allow_degraded: frozenset = frozenset()
    disable: frozenset = frozenset()
    # http_allow / http_deny / http_ports, parsed (httpacl.HttpAcl); None: no HTTP proxy
    http: Any = None
    # http_ca_out: where the run writes the HTTPS CA's certificate (PEM)
    http_ca_out: str | None = None
    # Deterministic runs: the seed of every random source, the wall clock's
    # start (ns since the epoch), directory listings in byte order.
    random_seed: int | None = None
    time_start: int | None = None
    deterministic_dirs: bool = False
    # policy_fn's syscalls and timeout (policyfn.PolicyFnPlan); None: no policy_fn
    policy_fn: Any = None
    # chroot / fs_mount / fs_mount_ro / image: (root, mounts, read-only
    # mounts, from an image) as given, or None; fs_readable, fs_writable, fs_denied and cwd are then
    # virtual paths (the plan checks and resolves the tree)
    chroot: Any = None
    # Accepted and validated; their features have not landed yet.
    pending: tuple[str, ...] = ()
    # `sandlock learn` (learn.py): the supervisor records what the command
    # touches (set by learn.py on a Policy, never a Sandbox field)
    learn: bool = False


# Fields whose feature is not built yet: (field, "is it set?") pairs.
_PENDING = ("gpu_devices",)


def _callable(value, name):
    if value is not None and not callable(value):
        raise values.bad_value(name, value, "expected a function or None")


def branch_action(value, name) -> BranchAction:
    """A BranchAction from a member or its string value ("commit", "abort", ...)."""
    if isinstance(value, BranchAction):
        return value
    if isinstance(value, str):
        try:
            return BranchAction(value)
        except ValueError:
            pass
    allowed = ", ".join(repr(b.value) for b in BranchAction)
    raise values.bad_value(name, value, f"expected a BranchAction or one of {allowed}")


def _image(value):
    from ..image import Image
    if value is not None and not isinstance(value, Image):
        raise values.bad_value("image", value, "expected a sandlock.Image (from pull_image) or None")


def _notif_policy(value):
    if value is not None:
        raise values.bad_value(
            "notif_policy", value,
            "not supported: /proc is always virtualized by the supervisor, and the reference "
            "SDK ignores this field too; leave it None")


def _mounts(value, name):
    if not isinstance(value, Mapping):
        raise values.bad_value(name, value, "expected a mapping of sandbox path to host path")
    for k, v in value.items():
        values.check_path(k, name)
        values.check_path(v, name)


def _chroot(sb, p: dict):
    """(root, fs_mount, fs_mount_ro, from an image) as given, or None; the
    tree is checked when the plan is made (chroot.root_spec: the
    directories must exist then). A mount needs a chroot to be mounted in.
    An image is a chroot of its rootfs: readable whole unless fs_readable
    says otherwise, its environment under the caller's `env`, its working
    directory unless `cwd`."""
    image = sb.image
    if image is not None:
        if sb.chroot is not None:
            raise PolicyError("image and chroot: give one (an image is the chroot of its rootfs)")
        if not p["fs_readable"]:
            p["fs_readable"] = ("/",)
        env = dict(e.split("=", 1) for e in image.config.env if "=" in e)
        p["env"] = {**env, **p["env"]}
        if p["cwd"] is None:
            p["cwd"] = image.config.working_dir
        root = image.rootfs
    elif sb.chroot is None:
        if sb.fs_mount or sb.fs_mount_ro:
            raise PolicyError("fs_mount / fs_mount_ro: need a chroot (the tree they are mounted in)")
        return None
    else:
        root = sb.chroot
    return (str(root), tuple((str(k), str(v)) for k, v in dict(sb.fs_mount).items()),
            tuple((str(k), str(v)) for k, v in dict(sb.fs_mount_ro).items()), image is not None)


def _net_rules(value, field: str, hostnames: bool) -> tuple:
    """The parsed rules (NetRule objects); hostnames are resolved at launch."""
    from .netrules import parse_rules
    return tuple(parse_rules(value, field, allow_hostnames=hostnames))


def _known_syscall(name: str) -> bool:
    from .._kernel import syscalls
    return name in syscalls.table().syscalls


def normalize(sb) -> Policy:
    """Validate every field of `sb` (a Sandbox) into a Policy."""
    v = values
    p: dict[str, Any] = dict(
        fs_readable=v.check_path_list(sb.fs_readable, "fs_readable"),
        fs_writable=v.check_path_list(sb.fs_writable, "fs_writable"),
        fs_denied=v.check_path_list(sb.fs_denied, "fs_denied"),
        net_allow=_net_rules(sb.net_allow, "net_allow", True),
        net_deny=_net_rules(sb.net_deny, "net_deny", False),
        net_allow_bind=parse_port_specs(sb.net_allow_bind, "net_allow_bind"),
        net_deny_bind=parse_port_specs(sb.net_deny_bind, "net_deny_bind"),
        port_remap=v.check_bool(sb.port_remap, "port_remap"),
        extra_deny_syscalls=syscall_groups.check_syscall_names(
            sb.extra_deny_syscalls, "extra_deny_syscalls", _known_syscall),
        extra_allow_syscalls=syscall_groups.check_allow_groups(
            sb.extra_allow_syscalls, "extra_allow_syscalls"),
        max_memory=sizes.parse_optional_size(sb.max_memory, "max_memory"),
        max_processes=v.check_optional_int(sb.max_processes, "max_processes", 1, 1 << 22),
        max_open_files=v.check_optional_int(sb.max_open_files, "max_open_files", 1, 1 << 30),
        max_cpu=v.check_optional_int(sb.max_cpu, "max_cpu", 1, 100),
        cpu_cores=v.check_cpu_list(sb.cpu_cores, "cpu_cores"),
        num_cpus=v.check_optional_int(sb.num_cpus, "num_cpus", 1, 4096),
        env=v.check_env(sb.env, "env"),
        clean_env=v.check_bool(sb.clean_env, "clean_env"),
        cwd=v.check_optional_path(sb.cwd, "cwd"),
        no_coredump=v.check_bool(sb.no_coredump, "no_coredump"),
        no_huge_pages=v.check_bool(sb.no_huge_pages, "no_huge_pages"),
        no_randomize_memory=v.check_bool(sb.no_randomize_memory, "no_randomize_memory"),
        no_supervisor=v.check_bool(sb.no_supervisor, "no_supervisor"),
        name=v.check_name(sb.name, "name"),
        allow_degraded=protections.coerce_all(sb.allow_degraded, "allow_degraded"),
        disable=protections.coerce_all(sb.disable, "disable"),
    )
    p.update(_copy_on_write(sb))
    # Fields validated here only; their features are checked at launch.
    v.check_optional_path(sb.chroot, "chroot")
    _mounts(sb.fs_mount, "fs_mount")
    _mounts(sb.fs_mount_ro, "fs_mount_ro")
    both = sorted(set(sb.fs_mount) & set(sb.fs_mount_ro))
    if both:
        raise PolicyError(f"fs_mount_ro: {both[0]!r} is also in fs_mount; a path is mounted one way")
    _image(sb.image)
    p["chroot"] = _chroot(sb, p)
    _notif_policy(sb.notif_policy)
    v.check_optional_path(sb.http_ca, "http_ca")
    v.check_optional_path(sb.http_key, "http_key")
    v.check_path_list(sb.http_inject_ca, "http_inject_ca")
    v.check_optional_path(sb.http_ca_out, "http_ca_out")
    p["http"] = _http(sb)
    p["http_ca_out"] = sb.http_ca_out
    p["ids"] = _ids(sb.uid, sb.gid)
    p["random_seed"] = determinism.random_seed(sb.random_seed)
    p["time_start"] = determinism.time_start_ns(sb.time_start)
    p["deterministic_dirs"] = v.check_bool(sb.deterministic_dirs, "deterministic_dirs")
    if sb.gpu_devices is not None:
        for dev in values.items_of(sb.gpu_devices, "gpu_devices", "device indices"):
            v.check_int(dev, "gpu_devices", 0, 1023)
    for name in ("policy_fn", "init_fn", "work_fn"):
        _callable(getattr(sb, name), name)
    from .policyfn import plan_policy_fn
    p["policy_fn"] = plan_policy_fn(sb.policy_fn, sb.policy_fn_events, sb.policy_fn_observe,
                                    sb.policy_fn_timeout)

    if p["net_allow"] and p["net_deny"]:
        raise PolicyError("net_allow and net_deny are mutually exclusive: use one or the other")
    if p["no_supervisor"]:
        needs = [n for n in ("max_memory", "max_cpu", "num_cpus") if p[n] is not None]
        needs += [n for n in ("net_allow", "net_deny", "port_remap") if p[n]]
        needs += ["http_allow/http_deny"] if p["http"] is not None else []
        if not p["net_deny_bind"].is_empty:
            needs.append("net_deny_bind")
        if p["max_processes"] not in (None, DEFAULT_MAX_PROCESSES):
            needs.append("max_processes")
        needs += [n for n in ("workdir", "max_disk") if p[n] is not None]
        needs += ["uid/gid"] if p["ids"] is not None else []
        needs += [n for n in ("random_seed", "time_start") if p[n] is not None]
        needs += ["deterministic_dirs"] if p["deterministic_dirs"] else []
        needs += ["policy_fn"] if p["policy_fn"] is not None else []
        needs += ["chroot/fs_mount/image"] if p["chroot"] is not None else []
        if needs:
            raise PolicyError(f"no_supervisor: {', '.join(needs)} need the supervisor")
        p["max_processes"] = None

    pending = tuple(n for n in _PENDING if _is_set(getattr(sb, n), n))
    return Policy(**p, pending=pending)


def _bundle_aliases(bundles: list[str]) -> list[str]:
    """Other names of the bundles that are commonly opened: the file a
    symlinked bundle stands for, and OpenSSL's default CA file when it is a
    symlink to one (Python's ssl and many clients open that name; served
    the same, else it would be refused: the real file is hidden)."""
    import ssl
    real = {os.path.realpath(b): b for b in bundles}
    out = [r for r, b in real.items() if r != b]
    default = ssl.get_default_verify_paths().openssl_cafile
    if default and os.path.isabs(default) and default not in bundles \
            and os.path.realpath(default) in real:
        out.append(os.path.normpath(default))
    return out


def _http(sb):
    """The HTTP ACL (httpacl.HttpAcl) or None; http_ports alone is refused
    (a port to intercept with no rule to apply is a mistake)."""
    from .. import httpacl
    values.check_str_list(sb.http_allow, "http_allow")
    values.check_str_list(sb.http_deny, "http_deny")
    ports = tuple(dict.fromkeys(
        values.check_int(port, "http_ports", 1, 65535)
        for port in values.items_of(sb.http_ports, "http_ports", "ports")))
    allow = httpacl.parse_rules(sb.http_allow, "http_allow")
    deny = httpacl.parse_rules(sb.http_deny, "http_deny")
    inject = [str(x) for x in values.items_of(sb.http_inject_ca, "http_inject_ca", "paths")]
    if (sb.http_ca is None) != (sb.http_key is None):
        raise PolicyError("http_ca and http_key: give both (the CA's certificate and its key) or neither")
    intercept = sb.http_ca is not None or bool(inject)
    from .. import httpauth
    creds = httpauth.parse_sources(sb.http_credentials, "http_credentials")
    auth = httpauth.parse_auth_rules(sb.http_auth, [c.name for c in creds], "http_auth")
    if not allow and not deny:
        if creds or auth:
            raise PolicyError("http_credentials / http_auth: need http_allow or http_deny "
                              "(the HTTP rules the proxy applies)")
        if ports:
            raise PolicyError("http_ports: needs http_allow or http_deny (the rules to apply there)")
        if intercept or sb.http_ca_out is not None:
            raise PolicyError("http_ca / http_inject_ca / http_ca_out: need http_allow or "
                              "http_deny (the rules to apply to the intercepted HTTPS)")
        return None
    if sb.http_ca_out is not None and not intercept:
        raise PolicyError("http_ca_out: needs http_ca/http_key or http_inject_ca (a CA to write)")
    if not intercept:
        return httpacl.HttpAcl(allow, deny, ports or httpacl.DEFAULT_PORTS, auth=auth,
                               credentials=creds)
    from .. import httpca
    location = httpca.crypto_location()  # PolicyError without the extra
    bundles = []
    for path in inject:
        if not os.path.isabs(path):
            raise PolicyError(f"http_inject_ca: {path!r} is not an absolute path")
        bundles.append(os.path.normpath(path))
    bundles += _bundle_aliases(bundles)
    ca_files = None if sb.http_ca is None else (str(sb.http_ca), str(sb.http_key))
    return httpacl.HttpAcl(allow, deny, ports or httpacl.DEFAULT_PORTS + (443,), True, ca_files,
                           None, tuple(dict.fromkeys(bundles)), None, location, auth, creds)


def _ids(uid, gid) -> tuple[int, int] | None:
    """uid and gid, both or neither; None when they are already ours (no
    user namespace is needed then)."""
    import os
    uid = values.check_optional_int(uid, "uid", 0, 2**32 - 2)
    gid = values.check_optional_int(gid, "gid", 0, 2**32 - 2)
    if (uid is None) != (gid is None):
        raise PolicyError("uid and gid: set both or neither")
    if uid is None or gid is None or (uid, gid) == (os.geteuid(), os.getegid()):
        return None
    return uid, gid


def _copy_on_write(sb) -> dict[str, Any]:
    """The workdir fields. A branch action or quota without a workdir is
    refused: an ABORT that cannot abort anything must not let writes land."""
    import os
    workdir = values.check_optional_path(sb.workdir, "workdir")
    out: dict[str, Any] = dict(
        workdir=None,
        fs_storage=values.check_optional_path(sb.fs_storage, "fs_storage"),
        max_disk=sizes.parse_optional_size(sb.max_disk, "max_disk"),
        on_exit=branch_action(sb.on_exit, "on_exit"),
        on_error=branch_action(sb.on_error, "on_error"),
    )
    if sb.image is not None and hasattr(sb.image, "rootfs"):
        workdir = _image_workdir(sb.image, workdir, out)
    if workdir is None:
        odd = [n for n in ("fs_storage", "max_disk") if out[n] is not None]
        odd += [n for n, default in (("on_exit", BranchAction.COMMIT), ("on_error", BranchAction.ABORT))
                if out[n] is not default]
        if odd:
            raise PolicyError(f"{', '.join(odd)}: needs a workdir (a copy-on-write branch to act on)")
        return out
    real = os.path.realpath(workdir)
    if not os.path.isdir(real):
        raise PolicyError(f"workdir: {workdir!r} is not an existing directory")
    if real == "/":
        raise PolicyError("workdir: '/' cannot be a copy-on-write workdir")
    out["workdir"] = real
    return out


def _image_workdir(image, workdir, out: dict[str, Any]) -> str:
    """An image run writes to a copy-on-write branch: of the image's rootfs
    unless a workdir is given. The unpacked rootfs is a cache shared by
    every run, never written: a branch over it is always discarded. Without
    a workdir both actions are ABORT (on_exit's default, COMMIT, has no
    place to commit to); a workdir given inside the rootfs must say ABORT
    itself; KEEP and DEFER, which keep a branch that could be committed
    into the cache later, are refused. A workdir elsewhere (an fs_mount's
    host directory) keeps its own actions."""
    import os
    cache = os.path.realpath(str(image.rootfs))
    given = workdir is not None
    if not given:
        if not os.path.isdir(cache):
            raise PolicyError(f"image: its rootfs {cache!r} is not an existing directory")
        workdir = cache
        if out["on_exit"] is BranchAction.COMMIT:
            out["on_exit"] = BranchAction.ABORT
    real = os.path.realpath(workdir)
    if real == cache or real.startswith(cache.rstrip("/") + "/"):
        for name in ("on_exit", "on_error"):
            if out[name] is not BranchAction.ABORT:
                where = "the workdir given is inside" if given else "without a workdir, writes go to"
                raise PolicyError(
                    f"{name}: {out[name].value!r} with an image: {where} a copy-on-write branch "
                    "of the image's rootfs, a cache shared by every run that is never written; "
                    "only 'abort' is allowed (fs_mount a host directory, or give it as the "
                    "workdir, to keep the output)")
    return workdir


def _is_set(value, name) -> bool:
    if isinstance(value, bool):
        return value
    if name in ("on_exit", "on_error"):
        return False
    return value is not None and value != () and value != [] and value != {}
