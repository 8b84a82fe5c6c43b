"""The install's own certificate authority, made once with `openssl` in STATE_DIR/tls.

`ca.crt` is what clients trust (devices, the bridge: WHARF_MQTT_CA_FILE); `ca.key`
never leaves the folder (0600). The servers' certificate is issued for 127.0.0.1,
::1, localhost and the configured MQTT host, and renewed when that host changes.
No Python dependency: Debian's openssl does it.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wharf.infra.process import ServiceError
from schemas.secrets import private_dir

DAYS_CA = 3650
DAYS_SERVER = 825  # the longest lifetime clients such as Apple's accept for a server certificate


@dataclass(frozen=True)
class ServerCert:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise ServiceError("tls: openssl is not installed (apt-get install openssl)")
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"tls: openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def _names(host: str) -> list[str]:
    names = ["IP:127.0.0.1", "IP:::1", "DNS:localhost"]
    if host and host not in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::"):
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return names


def ensure_ca(folder: Path) -> tuple[Path, Path]:
    """The CA (created on first call, then reused: devices keep trusting it)."""
    private_dir(folder)
    ca, key = folder / "ca.crt", folder / "ca.key"
    if not (ca.exists() and key.exists()):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                 "-out", str(ca), "-days", str(DAYS_CA), "-subj", f"/CN=Wharf install CA {folder.parent.name}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key.chmod(0o600)
    ca.chmod(0o644)
    return ca, key


def ensure_server_cert(folder: Path, host: str, name: str = "server") -> ServerCert:
    """A server certificate signed by the CA for the local addresses and `host`."""
    ca, ca_key = ensure_ca(folder)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    names_file = folder / f"{name}.names"
    names = ",".join(_names(host))
    if not (cert.exists() and key.exists()) or not names_file.exists() or names_file.read_text() != names:
        csr = folder / f"{name}.csr"
        ext = folder / f"{name}.ext"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                 "-out", str(csr), "-subj", f"/CN={host or 'localhost'}")
        ext.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
                 "-days", str(DAYS_SERVER), "-sha256", "-extfile", str(ext))
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
        names_file.write_text(names)
    key.chmod(0o600)
    return ServerCert(ca=ca, cert=cert, key=key)
