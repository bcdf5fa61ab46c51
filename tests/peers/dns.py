"""A real DNS server on loopback: dnsmasq (Debian package `dnsmasq-base`) serving the records a
test declares, on a free UDP+TCP port.

    dns = DnsServer()
    dns.add_mx("example.test", "mx.example.test", 10)
    dns.add_host("mx.example.test", "127.0.0.1")
    dns.add_txt("smtp._domainkey.example.test", "v=DKIM1; k=rsa; p=...")  # > 255 bytes is fine
    dns.add_null_mx("nomail.example.test")
    dns.start()                       # Settings: sender.dns_servers = [dns.address]
    ...
    dns.stop()

Every name a record mentions becomes a local zone (`--local=/name/`), so an unknown name below
it is NXDOMAIN rather than REFUSED; `add_zone("test")` makes a whole tree local. dnsmasq reads
its records from the command line only, so changing records needs `restart()` (same port).
Stopped by its own PID; it also dies with the test process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver

from kannon.runtime.processes import ChildProcess, free_port, start_child, wait_until

DNSMASQ_PATH = "/usr/sbin/dnsmasq"
INSTALL_HINT = "install it with: apt-get install -y dnsmasq-base"
TXT_CHUNK = 255

# dnsmasq drops privileges and capabilities at start, and any credential change clears the
# PR_SET_PDEATHSIG our children get: a killed test run would leave dnsmasq orphaned. So it runs
# under a shell that keeps the death signal and takes dnsmasq down with it (and on stop()).
_GUARD = (
    "/bin/sh",
    "-c",
    'trap \'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0\' TERM INT HUP; '
    '"$@" & child=$!; wait "$child"',
    "dnsmasq-guard",
)


def find_dnsmasq() -> str:
    # /usr/sbin is not on an unprivileged user's PATH, so look there explicitly.
    found = shutil.which("dnsmasq") or (DNSMASQ_PATH if os.access(DNSMASQ_PATH, os.X_OK) else None)
    if found is None:
        raise RuntimeError(f"dnsmasq not found (PATH or {DNSMASQ_PATH}); {INSTALL_HINT}")
    return found


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def txt_chunks(value: str) -> list[str]:
    """`value` split into character-strings of at most 255 bytes (RFC 1035 §3.3.14)."""
    if not value.isascii():
        raise ValueError("TXT values must be ASCII here (a chunk boundary could split a char)")
    raw = value.encode("ascii")
    if any(c in raw for c in (b'"', b"\\", b"\n", b"\r")):
        raise ValueError("TXT values with quotes, backslashes or line breaks are not supported")
    return [raw[i : i + TXT_CHUNK].decode("ascii") for i in range(0, len(raw), TXT_CHUNK)] or [""]


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", *, ttl: int = 0) -> None:
        """`ttl`: TTL of every answer. 0 (dnsmasq's default) means resolvers cache nothing,
        so a test sees each record change at once; a benchmark wants a realistic 300."""
        self.host = host
        self.ttl = ttl
        self.port = 0
        self._mx: list[tuple[str, str, int]] = []
        self._hosts: dict[str, list[str]] = {}
        self._txt: list[tuple[str, str]] = []
        self._zones: set[str] = set()
        self._child: ChildProcess | None = None
        self._dir: Path | None = None

    # -- records ---------------------------------------------------------------------------

    def add_mx(self, domain: str, exchange: str, preference: int = 10) -> DnsServer:
        self._mx.append((_norm(domain), _norm(exchange), preference))
        self._zones.add(_norm(domain))
        return self

    def add_null_mx(self, domain: str) -> DnsServer:
        """`MX 0 .` (RFC 7505): the domain accepts no mail."""
        return self.add_mx(domain, ".", 0)

    def add_host(self, name: str, *addresses: str) -> DnsServer:
        """A and/or AAAA records for `name`."""
        for address in addresses:
            ipaddress.ip_address(address)  # fail here, not inside dnsmasq
        self._hosts.setdefault(_norm(name), []).extend(addresses)
        self._zones.add(_norm(name))
        return self

    def add_txt(self, name: str, value: str) -> DnsServer:
        txt_chunks(value)
        self._txt.append((_norm(name), value))
        self._zones.add(_norm(name))
        return self

    def set_txt(self, name: str, value: str) -> DnsServer:
        """Replace every TXT record of `name` by this one (then `restart()` to serve it)."""
        self._txt = [(n, v) for n, v in self._txt if n != _norm(name)]
        return self.add_txt(name, value)

    def add_zone(self, zone: str) -> DnsServer:
        """Answer for everything below `zone` locally (unknown names: NXDOMAIN)."""
        self._zones.add(_norm(zone))
        return self

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`host:port`, the syntax of `sender.dns_servers` entries."""
        return f"{self.host}:{self.port}"

    def config_text(self) -> str:
        """The records as a dnsmasq config file (quotes there keep commas inside TXT values;
        on the command line dnsmasq would keep the quote characters instead)."""
        lines = [f"local-ttl={self.ttl}"]
        lines += [f"local=/{zone}/" for zone in sorted(self._zones) if zone != "."]
        for domain, exchange, preference in self._mx:
            lines.append(f"mx-host={domain},{exchange},{preference}")
        for name, addresses in self._hosts.items():
            lines.append(f"host-record={name},{','.join(addresses)}")
        for name, value in self._txt:
            quoted = ",".join(f'"{chunk}"' for chunk in txt_chunks(value))
            lines.append(f"txt-record={name},{quoted}")
        return "\n".join(lines) + "\n"

    def argv(self, binary: str, config: Path) -> list[str]:
        return [
            binary,
            "--keep-in-foreground",
            f"--conf-file={config}",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--log-facility=-",
            f"--listen-address={self.host}",
            "--bind-interfaces",
            f"--port={self.port}",
        ]

    def start(self) -> DnsServer:
        binary = find_dnsmasq()
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="kannon-test-dns-"))
        keep_port = self.port != 0
        last_error = ""
        for _ in range(5):
            if not keep_port:
                self.port = free_port(self.host)
                if not _udp_port_free(self.port):
                    continue
            config = self._dir / "dnsmasq.conf"
            config.write_text(self.config_text(), encoding="utf-8")
            argv = [*_GUARD, *self.argv(binary, config)]
            child = start_child("dnsmasq", argv, self._dir / "dnsmasq.log")
            try:
                wait_until(child, self._answers, 10.0, "dnsmasq")
            except Exception as exc:
                child.stop()
                last_error = f"{exc}\n{child.log_tail()}"
                if keep_port:
                    break
                continue
            self._child = child
            return self
        raise RuntimeError(f"dnsmasq did not start: {last_error}")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def restart(self) -> DnsServer:
        """Apply records added since start() (dnsmasq reads them only at start), same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolver(self) -> dns.resolver.Resolver:
        """A synchronous resolver asking only this server (for a test's own checks)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = 2.0
        return resolver

    def _answers(self) -> bool:
        query = dns.message.make_query("ready.kannon.invalid", dns.rdatatype.A)
        with contextlib.suppress(dns.exception.DNSException, OSError):
            dns.query.udp(query, self.host, port=self.port, timeout=0.2)
            return True
        return False


def _norm(name: str) -> str:
    name = name.strip().lower()
    return name if name == "." else name.rstrip(".")
