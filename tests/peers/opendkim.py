"""OpenDKIM's `opendkim-testmsg` (Debian package `opendkim-tools`) as an independent DKIM
verifier that fetches keys from a test's own DNS server (a `DnsServer`).

    for v in verify_each(raw_message, dns):   # one Verdict per DKIM-Signature, in order
        v.selector, v.ok, v.detail            # detail: the tool's complaint ("Bad signature")

The tool has no way to be pointed at a DNS server: on Debian 12 (2.11.0~beta2) it takes only
-C (keep CRLF) -d -K -k -s -t; it reads no opendkim.conf (Nameservers, ResolverConfiguration and
TestPublicKeys belong to the opendkim milter, package `opendkim`), is not linked with
libunbound, and libopendkim asks the system resolver (res_ninit: /etc/resolv.conf, always port
53) while the test's dnsmasq listens on a high loopback port. So each call runs
the tool inside private network and mount namespaces (`unshare --net --mount`): there the
loopback interface is a fresh one of its own, a second dnsmasq serves the same records on
127.0.0.1:53, and /etc/resolv.conf is a bind mount of a file naming it. The machine's
/etc/resolv.conf, its port 53 and its services are never touched: the mount and the listening
socket exist only inside the namespaces and vanish with the process. As root this needs
nothing more; as another user it needs unprivileged user namespaces (`--map-root-user`).

`opendkim-testmsg` exits 0 when ANY signature verifies, so every signature is checked on its own
copy of the message that keeps only that DKIM-Signature field (Kannon never signs
DKIM-Signature itself, so removing the others changes nothing the signature covers).
The tool also insists on RFC 5322's Date and single From/To/Subject/... (STRICTHDRS).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kannon.runtime.processes import child_argv
from tests.peers.dns import DnsServer

TESTMSG_PATH = "/usr/sbin/opendkim-testmsg"
INSTALL_HINT = "install it with: apt-get install -y opendkim-tools (in the Makefile's TEST_DEBS)"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Per run of the tool inside the namespace, and for the whole namespace session.
TESTMSG_TIMEOUT = 20.0
SESSION_TIMEOUT = 60.0

_SIGNATURE = re.compile(rb"^dkim-signature:", re.IGNORECASE)
_SELECTOR = re.compile(rb"(?:^|;)\s*s\s*=\s*([^;\s]+)")
# struct ifreq: 16-byte interface name, then the flags (short) in a 24-byte union.
_IFREQ = "16sh22x"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_OUTER_NAMESPACES = "KANNON_TEST_OUTER_NAMESPACES"


@dataclass(frozen=True)
class Verdict:
    selector: str
    ok: bool
    detail: str  # what opendkim-testmsg wrote on stderr (empty when it verified)


def find_testmsg() -> str | None:
    # /usr/sbin is not on an unprivileged user's PATH, so look there explicitly.
    found = shutil.which("opendkim-testmsg")
    return found or (TESTMSG_PATH if os.access(TESTMSG_PATH, os.X_OK) else None)


def _unshare_argv() -> list[str]:
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    argv = [unshare, "--net", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        argv.insert(1, "--map-root-user")
    return argv


@cache
def unavailable() -> str | None:
    """Why `verify_each` cannot run here, or None when it can."""
    if find_testmsg() is None:
        return f"opendkim-testmsg not found; {INSTALL_HINT}"
    probe = subprocess.run(
        [*_unshare_argv(), "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        return (
            "cannot create network and mount namespaces for opendkim-testmsg's own resolver "
            f"(needs root or unprivileged user namespaces): {probe.stderr.strip()}"
        )
    return None


def _header_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields of `message` (each with its folded lines and line ends) and the rest."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError("message has no header/body separator (CRLF CRLF)")
    fields: list[bytes] = []
    for line in message[: end + 2].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, message[end + 2 :]


def selectors(message: bytes) -> list[str]:
    """The s= of every DKIM-Signature field, in message order."""
    found: list[str] = []
    for field in _header_fields(message)[0]:
        if _SIGNATURE.match(field):
            value = re.sub(rb"\s+", b"", field.split(b":", 1)[1])
            match = _SELECTOR.search(b";" + value)
            found.append(match.group(1).decode("ascii") if match else "")
    return found


def only_signature(message: bytes, index: int) -> bytes:
    """`message` keeping only its `index`-th DKIM-Signature field."""
    fields, rest = _header_fields(message)
    kept: list[bytes] = []
    seen = 0
    for field in fields:
        if _SIGNATURE.match(field):
            seen += 1
            if seen - 1 != index:
                continue
        kept.append(field)
    if not 0 <= index < seen:
        raise IndexError(f"message has {seen} DKIM-Signature fields, not {index + 1}")
    return b"".join(kept) + rest


def verify_each(message: bytes, dns: DnsServer) -> list[Verdict]:
    """Every DKIM-Signature of `message` checked by opendkim-testmsg on its own, keys looked up
    in the records `dns` serves (see the module doc for how)."""
    return verify_all([message], dns)[0]


def verify_all(messages: Sequence[bytes], dns: DnsServer) -> list[list[Verdict]]:
    """`verify_each` for several messages, in one namespace session (one dnsmasq start)."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    names = [selectors(message) for message in messages]
    runs = [
        only_signature(message, i)
        for message, found in zip(messages, names, strict=True)
        for i in range(len(found))
    ]
    outcomes = run_testmsg(runs, dns)
    verdicts: list[list[Verdict]] = []
    for found in names:
        mine, outcomes = outcomes[: len(found)], outcomes[len(found) :]
        verdicts.append(
            [Verdict(n, code == 0, detail) for n, (code, detail) in zip(found, mine, strict=True)]
        )
    return verdicts


def run_testmsg(messages: Sequence[bytes], dns: DnsServer) -> list[tuple[int, str]]:
    """(exit code, stderr) of `opendkim-testmsg < message` for each message, all in one
    namespace session whose 127.0.0.1:53 serves `dns`'s records."""
    with tempfile.TemporaryDirectory(prefix="kannon-test-opendkim-") as tmp:
        work = Path(tmp)
        (work / "dnsmasq.conf").write_text(dns.config_text(), encoding="utf-8")
        for i, message in enumerate(messages):
            (work / f"message-{i}.eml").write_bytes(message)
        argv = [*_unshare_argv(), sys.executable, "-m", "tests.peers.opendkim", str(work)]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), _OUTER_NAMESPACES: _namespaces()}
        done = subprocess.run(
            child_argv(argv),
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=SESSION_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"opendkim namespace session failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        results = json.loads((work / "results.json").read_text(encoding="utf-8"))
    return [(int(code), str(detail)) for code, detail in results]


def _namespaces(process: str = "self") -> str:
    return ",".join(str(os.stat(f"/proc/{process}/ns/{ns}").st_ino) for ns in ("net", "mnt"))


def in_private_namespaces() -> bool:
    """True only in network and mount namespaces that are neither those of the process that
    started this one (`unshare` execs this process, so its parent is the caller) nor those the
    caller recorded in the environment. Anything unreadable or absent counts as not private."""
    try:
        mine = set(_namespaces().split(","))
        parent = set(_namespaces(str(os.getppid())).split(","))
    except OSError:
        return False
    recorded = set(os.environ.get(_OUTER_NAMESPACES, "").split(","))
    return len(mine) == 2 and len(recorded) == 2 and not mine & (parent | recorded)


# -- inside the namespaces ------------------------------------------------------------------


class _ResolverPort53(DnsServer):
    """The outer test's records, served where the system resolver looks: 127.0.0.1:53."""

    def __init__(self, config: str) -> None:
        super().__init__("127.0.0.1")
        self.port = 53
        self._config = config

    def config_text(self) -> str:
        return self._config

    def argv(self, binary: str, config: Path) -> list[str]:
        # --no-daemon rather than --keep-in-foreground: dnsmasq then keeps its user instead of
        # dropping to nobody:dip, which a user namespace (`--map-root-user`) does not map.
        return [
            "--no-daemon" if a == "--keep-in-foreground" else a
            for a in super().argv(binary, config)
        ]


def _loopback_up() -> None:
    # A new network namespace has `lo` down; `ip link set lo up` without needing iproute2.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _in_namespace(work: Path) -> None:
    # The bind mount below must never reach the machine's /etc/resolv.conf.
    if not in_private_namespaces():
        raise SystemExit("refusing to run outside private network and mount namespaces")
    _loopback_up()
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n", encoding="ascii")
    # Without /etc/resolv.conf the resolver already asks 127.0.0.1:53; with it, cover it here
    # only (the mount namespace is private: the machine's file is unchanged).
    if os.path.exists("/etc/resolv.conf"):
        # unshare already made this namespace's mounts private; again, so no mount made here
        # can propagate out whoever started this process.
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    testmsg = find_testmsg()
    assert testmsg is not None
    dns = _ResolverPort53((work / "dnsmasq.conf").read_text(encoding="utf-8"))
    dns.start()
    try:
        results: list[tuple[int, str]] = []
        count = len(list(work.glob("message-*.eml")))
        for i in range(count):
            with (work / f"message-{i}.eml").open("rb") as stdin:
                ran = subprocess.run(
                    [testmsg, "-t", str(work)],
                    stdin=stdin,
                    capture_output=True,
                    timeout=TESTMSG_TIMEOUT,
                    check=False,
                )
            results.append((ran.returncode, ran.stderr.decode("utf-8", "replace").strip()))
    finally:
        dns.close()
    (work / "results.json").write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    _in_namespace(Path(sys.argv[1]))
