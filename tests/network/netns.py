"""Hosts in Linux network namespaces, joined by veth to a bridge, with links cut and degraded.

``Network`` makes one namespace per host plus a ``hub`` namespace holding a bridge; each host's
``eth0`` is one end of a veth pair whose other end is a port of that bridge. This machine
(the test process, "the operator") joins the bridge too, through a veth of its own, so it can
reach every host by address. Addresses are ``10.A.B.N/24``, with ``A.B`` drawn at random and
checked against this machine's routes; every name carries a random tag, so parallel runs do
not meet. ``close`` deletes the namespaces (their links and the bridge go with them) however
the run ended.

A link is cut by taking its bridge port down (``ip link set down``: the host keeps its address,
its packets go nowhere) and degraded on both of its ends: with ``tc netem`` (delay, loss, rate)
where the kernel has it, else with what it has: ``tc tbf`` for the rate and iptables'
``statistic`` match for the loss, the delay then left out (``Impairment.applied`` says what
took effect).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import subprocess
import uuid
from dataclasses import dataclass, field
from types import TracebackType

IP = "ip"


class NetnsRefusedError(RuntimeError):
    """This machine does not let us make namespaces (not root, no CAP_NET_ADMIN)."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def refused_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can): tried for real, then removed."""
    name = f"efprobe-{uuid.uuid4().hex[:8]}"
    try:
        made = sh(IP, "netns", "add", name, check=False)
    except FileNotFoundError:
        return "the ip command is missing (apt-get install iproute2)"
    if made.returncode != 0:
        why = made.stderr.strip()
        return f"ip netns add is refused here ({why}); it needs root or CAP_NET_ADMIN"
    sh(IP, "netns", "del", name, check=False)
    return None


@dataclass(frozen=True)
class Impairment:
    """What a degraded link does, each way: ``rate_kbit`` (0: unlimited), ``delay_ms``,
    ``loss_pct``."""

    rate_kbit: int = 1000
    delay_ms: int = 300
    loss_pct: float = 5.0


@dataclass(frozen=True)
class Applied:
    """What took effect on a link: the impairment's parts the kernel could do, and how."""

    rate_kbit: int
    delay_ms: int
    loss_pct: float
    how: str  # "netem", or "tbf+iptables" (no netem in this kernel: no delay)


@dataclass
class Host:
    name: str  # the short name the test gives ("ctl", "d1")
    netns: str
    address: str
    port: str  # its bridge port, in the hub namespace
    index: int

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host: ``[*host.prefix, *argv]``."""
        return [IP, "netns", "exec", self.netns]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix, *argv, check=check)


def _routes() -> list[ipaddress.IPv4Network]:
    out = sh(IP, "-4", "route", "show", "table", "all", check=False).stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in ("default", "broadcast", "local"):
                nets.append(ipaddress.IPv4Network(first, strict=False))
    return nets


def _free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A 10.A.B.0/24 no route of this machine overlaps."""
    rng = rng or random.Random()
    taken = _routes()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.x.y.0/24 on this machine")


@dataclass
class Network:
    """The hosts of one test; a context manager that always removes them."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    operator_address: str = ""
    _namespaces: list[str] = field(default_factory=list)
    _netem: bool | None = None

    @property
    def hub(self) -> str:
        return f"ef{self.tag}-hub"

    def __enter__(self) -> Network:
        try:
            self._add_netns(self.hub)
            sh(IP, "-n", self.hub, "link", "set", "lo", "up")
            sh(IP, "-n", self.hub, "link", "add", "br0", "type", "bridge")
            sh(IP, "-n", self.hub, "link", "set", "br0", "up")
            # this machine's own port: the operator (the test) reaches every host through it
            mine, port = f"ef{self.tag}op", f"ef{self.tag}opp"
            sh(IP, "link", "add", mine, "type", "veth", "peer", "name", port)
            sh(IP, "link", "set", port, "netns", self.hub)
            sh(IP, "-n", self.hub, "link", "set", port, "master", "br0", "up")
            self.operator_address = str(self.subnet[254])
            sh(IP, "addr", "add", f"{self.operator_address}/24", "dev", mine)
            sh(IP, "link", "set", mine, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        made = sh(IP, "netns", "add", name, check=False)
        if made.returncode != 0:
            raise NetnsRefusedError(f"ip netns add {name}: {made.stderr.strip()}")
        self._namespaces.append(name)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"ef{self.tag}-{name}"
        port, inside = f"ef{self.tag}p{index}", f"ef{self.tag}h{index}"
        address = str(self.subnet[index])
        self._add_netns(netns)
        sh(IP, "link", "add", inside, "type", "veth", "peer", "name", port)
        sh(IP, "link", "set", port, "netns", self.hub)
        sh(IP, "-n", self.hub, "link", "set", port, "master", "br0", "up")
        sh(IP, "link", "set", inside, "netns", netns)
        sh(IP, "-n", netns, "link", "set", inside, "name", "eth0")
        sh(IP, "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh(IP, "-n", netns, "link", "set", "eth0", "up")
        sh(IP, "-n", netns, "link", "set", "lo", "up")
        host = Host(name, netns, address, port, index)
        self.hosts[name] = host
        return host

    # cutting and degrading

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its bridge port goes down (``ip link set down``)."""
        sh(IP, "-n", self.hub, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        sh(IP, "-n", self.hub, "link", "set", host.port, "up")

    def degrade(self, host: Host, imp: Impairment) -> Applied:
        """Impair the host's link both ways (its ``eth0`` and its bridge port)."""
        ends = [(host.netns, "eth0"), (self.hub, host.port)]
        if self.netem_available():
            for netns, dev in ends:
                args = ["delay", f"{imp.delay_ms}ms", "loss", f"{imp.loss_pct:g}%"]
                if imp.rate_kbit:
                    args += ["rate", f"{imp.rate_kbit}kbit"]
                sh(IP, "netns", "exec", netns, "tc", "qdisc", "replace", "dev", dev, "root",
                   "netem", *args, "limit", "10000")  # fmt: skip
            return Applied(imp.rate_kbit, imp.delay_ms, imp.loss_pct, "netem")
        for netns, dev in ends:
            if imp.rate_kbit:
                sh(IP, "netns", "exec", netns, "tc", "qdisc", "replace", "dev", dev, "root",
                   "tbf", "rate", f"{imp.rate_kbit}kbit", "burst", "16kbit",
                   "latency", "500ms")  # fmt: skip
        if imp.loss_pct:  # both directions, in the host's own firewall
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                p = f"{imp.loss_pct / 100:g}"
                host.run("iptables", "-A", chain, flag, "eth0", "-m", "statistic",
                         "--mode", "random", "--probability", p, "-j", "DROP")  # fmt: skip
        return Applied(imp.rate_kbit, 0, imp.loss_pct, "tbf+iptables")

    def restore(self, host: Host) -> None:
        """Take every impairment off the host's link."""
        for netns, dev in ((host.netns, "eth0"), (self.hub, host.port)):
            sh(IP, "netns", "exec", netns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        host.run("iptables", "-F", "INPUT", check=False)
        host.run("iptables", "-F", "OUTPUT", check=False)

    def netem_available(self) -> bool:
        """Whether this kernel has ``sch_netem`` (tried on the hub's loopback)."""
        if self._netem is None:
            tried = sh(IP, "netns", "exec", self.hub, "tc", "qdisc", "add", "dev", "lo", "root",
                       "netem", "delay", "1ms", check=False)  # fmt: skip
            self._netem = tried.returncode == 0
            sh(IP, "netns", "exec", self.hub, "tc", "qdisc", "del", "dev", "lo", "root",
               check=False)  # fmt: skip
        return self._netem

    def close(self) -> None:
        """Delete every namespace made (their veths and the bridge go with them)."""
        for name in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                for pid in sh(IP, "netns", "pids", name, check=False).stdout.split():
                    sh("kill", "-9", pid, check=False)  # nothing may outlive its host
            sh(IP, "netns", "del", name, check=False)
        self._namespaces.clear()
        sh(IP, "link", "del", f"ef{self.tag}op", check=False)
