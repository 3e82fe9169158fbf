"""Reading an image import source safely, and inspecting the image while it streams.

Sources are ``http(s)://`` URLs and ``file://`` paths below an operator-set import root. A server-side
fetch must not become a way into the platform's own network (SSRF): hosts that resolve to loopback,
link-local (the metadata service at 169.254.169.254), private, CGNAT, multicast or reserved
addresses are refused unless an operator allow-list names them, every redirect hop is checked
again, and the connection goes to the address that was checked (no second DNS lookup, so DNS
rebinding cannot swap it).

The bytes are inspected with OpenStack's ``oslo_utils.imageutils.format_inspector``, the code that
Glance and Nova use since CVE-2022-47951 and CVE-2024-32498: the declared format must be what the
bytes are, and a qcow2 backing file, a qcow2 external data file or a VMDK extent that points
elsewhere is refused.

Synchronous and streaming with bounded memory: the catalog's job handlers run it in a worker thread.
urllib3 and the inspector (7 MB of the catalog's memory) are imported by the functions that use them,
when an import first runs, not when the catalog starts.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import socket
import ssl
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

if TYPE_CHECKING:
    import urllib3
    from oslo_utils.imageutils import format_inspector

CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 5
MAX_URI_LENGTH = 4096
DECLARABLE_FORMATS = ("raw", "vhd", "qcow2", "vmdk")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "cloudimg-import/1"


class ImportRefused(Exception):
    """An import source or image that is refused; ``reason`` is an UPPER_SNAKE code, ``message`` for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImportPolicy:
    import_root: Path | None
    """file:// sources are read only below it; None turns them off."""
    allowed_sources: tuple[str, ...]
    """URL prefixes (scheme://host[:port][/path]) that may be fetched although their host is not public.
    Without a port a prefix matches any port of its host; with a path, only URLs below that path."""
    max_bytes: int
    """The largest source accepted, enforced from Content-Length and again while streaming."""
    timeout_seconds: float = 30
    """For connecting and for each read (not for the whole transfer, which may take long)."""

    def __post_init__(self) -> None:
        for prefix in self.allowed_sources:
            parts = urlsplit(prefix)
            if (parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None
                    or parts.password is not None or parts.query or parts.fragment):
                raise ValueError(f"allowed source {prefix!r} is not an http(s)://host[:port][/path] prefix")
            _ = parts.port  # raises ValueError on a bad port
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")


# -- checking a source -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HttpSource:
    url: str
    scheme: str
    hostname: str  # as in the URL, lowercase, IPv6 without brackets
    port: int
    target: str  # path and query, sent in the request line
    addresses: tuple[str, ...]  # what the hostname resolved to, all checked: the only ones connected to

    @property
    def host_header(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else _ascii_host(self.hostname)
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check_source(uri: str, policy: ImportPolicy) -> None:
    """Refuses, with ImportRefused, a source that may not be imported (cheap: for request time).

    SOURCE_NOT_ALLOWED for another scheme, a file outside the import root, credentials in the URL or
    a host that is not public (unless allow-listed); INVALID_SOURCE_URI for what does not parse;
    SOURCE_UNREACHABLE for a host that does not resolve or a file that does not exist.
    """
    _vet(uri, policy)


def open_source(uri: str, policy: ImportPolicy) -> Iterator[bytes]:
    """The source's bytes in chunks of at most 1 MiB, checked as check_source does (again, now).

    The source is checked when this is called; connection, redirects and transfer happen as the
    chunks are read, and fail with ImportRefused: SOURCE_NOT_ALLOWED (a redirect to a refused
    place), SOURCE_UNREACHABLE (connection errors, non-2xx statuses), SOURCE_TOO_LARGE.
    """
    source = _vet(uri, policy)
    if isinstance(source, Path):
        return _read_file(source, policy)
    return _read_http(source, policy)


def _vet(uri: str, policy: ImportPolicy) -> Path | _HttpSource:
    if len(uri) > MAX_URI_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise ImportRefused("INVALID_SOURCE_URI", "the source URI is too long or has spaces or control characters")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ImportRefused("INVALID_SOURCE_URI", f"the source URI does not parse ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _vet_file(parts, policy)
    if scheme not in _DEFAULT_PORTS:
        shown = f"{scheme}://" if scheme else "a URI without a scheme"
        raise ImportRefused("SOURCE_NOT_ALLOWED", f"{shown} sources are not supported (use http, https or file)")
    if parts.username is not None or parts.password is not None:
        raise ImportRefused("SOURCE_NOT_ALLOWED", "credentials in the source URL are not allowed")
    hostname = (parts.hostname or "").rstrip(".")
    if not hostname:
        raise ImportRefused("INVALID_SOURCE_URI", "the source URL has no host")
    try:
        _ascii_host(hostname)
    except UnicodeError:
        raise ImportRefused("INVALID_SOURCE_URI", "the source URL's host name is not valid") from None
    port = port or _DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    addresses = _resolve(hostname, port)
    if not _allow_listed(scheme, hostname, port, parts.path, policy.allowed_sources):
        for address in addresses:
            why = _why_not_public(ipaddress.ip_address(address))
            if why:
                shown = address if address == hostname else f"{hostname} ({address})"
                raise ImportRefused("SOURCE_NOT_ALLOWED", f"{shown} is {why}, not a public address")
    url = SplitResult(scheme, parts.netloc, parts.path, parts.query, "").geturl()
    return _HttpSource(url, scheme, hostname, port, target, addresses)


def _vet_file(parts: SplitResult, policy: ImportPolicy) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise ImportRefused("SOURCE_NOT_ALLOWED", "file:// sources must be local paths (file:///...)")
    if parts.query or parts.fragment:
        raise ImportRefused("INVALID_SOURCE_URI", "a file:// source has no query or fragment")
    raw_path = unquote(parts.path)
    if "\x00" in raw_path or not raw_path.startswith("/"):
        raise ImportRefused("INVALID_SOURCE_URI", "a file:// source needs an absolute path")
    if policy.import_root is None:
        raise ImportRefused("SOURCE_NOT_ALLOWED", "file:// imports are turned off (no import root)")
    if ".." in raw_path.split("/"):
        raise ImportRefused("SOURCE_NOT_ALLOWED", "the path may not contain '..'")
    root = policy.import_root.resolve()
    path = Path(raw_path).resolve()  # follows symlinks: where the bytes really are is what is checked
    if not path.is_relative_to(root):
        raise ImportRefused("SOURCE_NOT_ALLOWED", f"{raw_path} is outside the import root")
    if not path.exists():
        raise ImportRefused("SOURCE_UNREACHABLE", f"{raw_path} does not exist")
    if not path.is_file():
        raise ImportRefused("SOURCE_NOT_ALLOWED", f"{raw_path} is not a regular file")
    return path


def _resolve(hostname: str, port: int) -> tuple[str, ...]:
    try:
        return (str(ipaddress.ip_address(hostname)),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImportRefused("SOURCE_UNREACHABLE", f"cannot resolve {hostname} ({exc.args[-1]})") from None
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ImportRefused("SOURCE_UNREACHABLE", f"cannot resolve {hostname}")
    return tuple(addresses)


def _why_not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a server-side fetch may not reach this address, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(ip):
            why = _why_not_public(embedded)
            if why:
                return why
    if ip in _CGNAT:
        return "a shared (CGNAT) address"
    for name, hit in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                      ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("private", ip.is_private), ("reserved", ip.is_reserved), ("non-global", not ip.is_global)):
        if hit:
            return f"a {name} address"
    return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each must pass too."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _allow_listed(scheme: str, hostname: str, port: int, path: str, prefixes: Iterable[str]) -> bool:
    """Whether the URL is below one of the operator's allowed prefixes, compared part by part.

    A plain string prefix would let http://127.0.0.1.evil.example/ through http://127.0.0.1.
    """
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        if allowed.scheme.lower() != scheme or (allowed.hostname or "").rstrip(".") != hostname:
            continue
        if allowed.port is not None and allowed.port != port:
            continue
        if _path_below(path, allowed.path):
            return True
    return False


def _path_below(path: str, prefix: str) -> bool:
    if prefix in ("", "/"):
        return True
    decoded = unquote(path)
    if any(segment in (".", "..") for segment in decoded.split("/")):
        return False
    decoded = posixpath.normpath(decoded or "/")
    base = prefix.rstrip("/")
    return decoded == base or decoded.startswith(base + "/")


def _ascii_host(hostname: str) -> str:
    return hostname if hostname.isascii() else hostname.encode("idna").decode("ascii")


# -- reading a source --------------------------------------------------------------------------------


def _read_file(path: Path, policy: ImportPolicy) -> Iterator[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImportRefused("SOURCE_UNREACHABLE", f"{path.name} does not exist") from None
    except OSError as exc:
        raise ImportRefused("SOURCE_NOT_ALLOWED", f"cannot open {path.name} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as stream:
        _recheck_opened_file(stream, path, policy)
        size = os.fstat(fd).st_size
        if size > policy.max_bytes:
            raise ImportRefused("SOURCE_TOO_LARGE", _too_large(policy.max_bytes, size))
        yield from _limited(iter(lambda: stream.read(CHUNK_SIZE), b""), policy.max_bytes)


def _recheck_opened_file(stream: IO[bytes], path: Path, policy: ImportPolicy) -> None:
    """Checks what was really opened: a directory component swapped for a symlink after the check
    would otherwise lead outside the import root."""
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        raise ImportRefused("SOURCE_NOT_ALLOWED", f"{path.name} is not a regular file")
    proc_link = f"/proc/self/fd/{stream.fileno()}"
    if policy.import_root is not None and os.path.exists(proc_link):
        real = Path(os.readlink(proc_link))
        if not real.is_relative_to(policy.import_root.resolve()):
            raise ImportRefused("SOURCE_NOT_ALLOWED", f"{path.name} is outside the import root")


def _read_http(source: _HttpSource, policy: ImportPolicy) -> Iterator[bytes]:
    import urllib3

    for hop in range(MAX_REDIRECTS + 1):
        pool, response = _request(source, policy)
        try:
            if response.status in _REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise ImportRefused("SOURCE_UNREACHABLE", f"HTTP {response.status} without a Location")
                if hop == MAX_REDIRECTS:
                    raise ImportRefused("SOURCE_UNREACHABLE", f"more than {MAX_REDIRECTS} redirects")
                next_hop = _vet(urljoin(source.url, location), policy)
                if isinstance(next_hop, Path):
                    raise ImportRefused("SOURCE_NOT_ALLOWED", "a redirect to a file:// URL is not followed")
                source = next_hop
                continue
            if not 200 <= response.status < 300:
                raise ImportRefused("SOURCE_UNREACHABLE", f"HTTP {response.status} from {source.hostname}")
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ImportRefused("SOURCE_UNREACHABLE", f"the server sent a {encoding}-encoded body")
            declared_length = _content_length(response)
            if declared_length is not None and declared_length > policy.max_bytes:
                raise ImportRefused("SOURCE_TOO_LARGE", _too_large(policy.max_bytes, declared_length))
            try:
                yield from _limited(response.stream(CHUNK_SIZE, decode_content=False), policy.max_bytes)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ImportRefused("SOURCE_UNREACHABLE", f"the transfer from {source.hostname} broke off "
                                    f"({_short(exc)})") from None
            return
        finally:
            response.release_conn()
            response.close()
            pool.close()


def _request(source: _HttpSource, policy: ImportPolicy) -> tuple[urllib3.HTTPConnectionPool, urllib3.BaseHTTPResponse]:
    import urllib3

    timeout = urllib3.Timeout(connect=policy.timeout_seconds, read=policy.timeout_seconds)
    headers = {"Host": source.host_header, "User-Agent": _USER_AGENT, "Accept": "*/*",
               "Accept-Encoding": "identity"}
    failure: Exception | None = None
    for address in source.addresses:
        pool: urllib3.HTTPConnectionPool
        if source.scheme == "https":
            # Connect to the vetted address, but verify the certificate for (and send SNI with) the name.
            pool = urllib3.HTTPSConnectionPool(address, source.port, timeout=timeout, retries=False,
                                               cert_reqs="CERT_REQUIRED", server_hostname=source.hostname,
                                               assert_hostname=source.hostname)
        else:
            pool = urllib3.HTTPConnectionPool(address, source.port, timeout=timeout, retries=False)
        try:
            response = pool.urlopen("GET", source.target, headers=headers, redirect=False, retries=False,
                                    assert_same_host=False, preload_content=False, decode_content=False)
            return pool, response
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            pool.close()
            failure = exc  # try the host's next address
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            pool.close()
            raise ImportRefused("SOURCE_UNREACHABLE", f"{source.hostname}: {_short(exc)}") from None
    raise ImportRefused("SOURCE_UNREACHABLE", f"cannot connect to {source.hostname} ({_short(failure)})")


def _content_length(response: urllib3.BaseHTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _limited(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        if done > max_bytes:
            raise ImportRefused("SOURCE_TOO_LARGE", _too_large(max_bytes))
        if chunk:
            yield chunk


def _too_large(max_bytes: int, size: int | None = None) -> str:
    found = f"{size} bytes" if size is not None else "more"
    return f"the source is {found}, over the limit of {max_bytes} bytes"


def _short(exc: BaseException | None) -> str:
    """A readable cause: urllib3 wraps the socket or TLS error that says what happened."""
    cause = exc.__cause__ if exc is not None and isinstance(exc.__cause__, OSError) else exc
    text = (cause.strerror if isinstance(cause, OSError) and cause.strerror and not isinstance(cause, ssl.SSLError)
            else str(cause or "unknown error"))
    return text if len(text) <= 160 else text[:157] + "..."


# -- inspecting the image while it streams -----------------------------------------------------------


@dataclass(frozen=True)
class Inspection:
    format: str  # "raw", "qcow2", "vhd", "vmdk"
    virtual_size: int  # bytes


# Formats that are a plain disk (a partitioned disk, an optical disc): declared and stored as raw.
_RAW_LIKE = frozenset({"raw", "gpt", "iso"})


def inspecting(chunks: Iterable[bytes], declared: str) -> tuple[Iterator[bytes], Callable[[], Inspection]]:
    """Wraps a stream so that the image is inspected while it passes (no second read).

    Returns the stream to consume and a verdict to call once it is exhausted: the Inspection, or
    ImportRefused with FORMAT_MISMATCH, BACKING_FILE, DATA_FILE, VMDK_EXTENT or UNSAFE_IMAGE.
    The stream itself raises that ImportRefused as soon as it is certain (a qcow2 header with a
    backing file fails after its first chunk, not after gigabytes) and at the latest in place of
    its end, so a refused image never completes a write into the image store.
    ``declared`` is one of raw, vhd (qemu's "vpc"), qcow2, vmdk.
    """
    from oslo_utils.imageutils import format_inspector

    if declared not in DECLARABLE_FORMATS:
        raise ValueError(f"cannot inspect declared format {declared!r}")
    judge = _Judge(format_inspector.InspectWrapper(cast(IO[bytes], iter(chunks))), declared)
    return judge.stream(), judge.verdict


class _Judge:
    def __init__(self, wrapper: format_inspector.InspectWrapper, declared: str):
        self._wrapper = wrapper
        self._declared = declared
        self._size = 0
        self._settled_early = False
        self._outcome: Inspection | ImportRefused | None = None

    def stream(self) -> Iterator[bytes]:
        for chunk in self._wrapper:
            self._size += len(chunk)
            if not self._settled_early:
                self._settled_early = self._settle(final=False) is not None
            yield chunk
        # Judged before the stream ends, so that a refused image never completes a write into the store.
        self._settle(final=True)

    def verdict(self) -> Inspection:
        if self._outcome is None:
            raise RuntimeError("the verdict needs the whole stream: read it to its end first")
        if isinstance(self._outcome, ImportRefused):
            raise self._outcome
        return self._outcome

    def _settle(self, *, final: bool) -> Inspection | None:
        try:
            inspection = self._judge(final=final)
        except ImportRefused as refused:
            self._outcome = refused
            raise
        if final:
            self._outcome = inspection
        return inspection

    def _judge(self, *, final: bool) -> Inspection | None:
        """The inspection, ImportRefused, or (before the end) None while the answer is not certain."""
        from oslo_utils.imageutils import format_inspector

        detected = self._detected()
        if detected is None:
            return None
        found = "raw" if str(detected) in _RAW_LIKE else str(detected)
        if found != self._declared:
            raise ImportRefused("FORMAT_MISMATCH", f"declared {self._declared}, but the image is {found}")
        if not final and not detected.complete:
            return None
        try:
            detected.safety_check()
        except format_inspector.SafetyCheckFailed as failed:
            raise _refusal(detected, failed.failures) from None
        except format_inspector.ImageFormatError as exc:
            raise ImportRefused("UNSAFE_IMAGE", f"the {found} image cannot be checked ({exc})") from None
        return Inspection(found, self._size if found == "raw" else detected.virtual_size)

    def _detected(self) -> format_inspector.FileInspector | None:
        from oslo_utils.imageutils import format_inspector

        try:
            matches = self._wrapper.formats
        except format_inspector.ImageFormatError as exc:
            raise ImportRefused("UNSAFE_IMAGE", str(exc)) from None
        if not matches:
            return None
        if len(matches) > 1:
            by_name = {str(m): m for m in matches}
            if set(by_name) == {"iso", "gpt"}:  # a bootable (hybrid) ISO carries a partition table
                return by_name["iso"]
            names = ", ".join(sorted(by_name))
            raise ImportRefused("UNSAFE_IMAGE", f"the image looks like several formats at once ({names})")
        return matches[0]


def _refusal(inspector: format_inspector.FileInspector, failures: dict[str, object]) -> ImportRefused:
    found = str(inspector)
    if "backing_file" in failures:
        return ImportRefused("BACKING_FILE", f"the {found} image has a backing file")
    if "data_file" in failures:
        return ImportRefused("DATA_FILE", f"the {found} image has an external data file")
    if "descriptor" in failures:
        subformat = getattr(inspector, "vmdktype", None) or "unknown"
        return ImportRefused("VMDK_EXTENT", f"unsafe VMDK descriptor (createType {subformat}): "
                             f"{str(failures['descriptor']).lower()}")
    check, failure = next(iter(failures.items()))
    return ImportRefused("UNSAFE_IMAGE", f"the {found} image fails the {check} check ({failure})")
