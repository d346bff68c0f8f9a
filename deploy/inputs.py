"""deploy-engine's flags checked before anything is written: every value ends up in a Kubernetes object, a
compose.yaml, a Dockerfile build context or a YAML comment, where a wrong one is either refused by the cluster
much later or, worse, changes what the file says (a newline in a path ending a comment and starting a key).

    check_args(args)            # DeployError naming the flag, the value and what it must be
    comment_text(value)         # a value placed in a '#' comment line: control characters escaped

The rules are the upstream ones: names are DNS-1123 labels or subdomains (Kubernetes' validation.IsDNS1123Label
and IsDNS1123Subdomain), counts are int32 (the API's replicas type), label values follow IsValidLabelValue,
image references the distribution/reference grammar, ports 1-65535, and a wheel is a zip archive holding a
`*.dist-info/WHEEL` metadata file (PEP 427) named as the Dockerfile's COPY expects.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import zipfile
from pathlib import Path

from deploy.engine_info import DeployError

INT32_MAX = 2 ** 31 - 1
# Kubernetes: a label (namespace, object names we derive pod names from) and a subdomain (PVC names).
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_VALUE_MAX = 63
# distribution/reference: [domain[:port]/]path-component(/path-component)*[:tag][@digest], lowercase path.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
IMAGE_REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
                             rf"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$")
IMAGE_NAME_MAX = 255
GPUS_PER_NODE_MAX = 1024
# A WHEEL file is a few lines; a larger one is not metadata.
WHEEL_METADATA_MAX = 64 * 1024


def control_characters(text: str) -> list[str]:
    """The control (and other non-printing format) characters in text, as escapes: what may not appear in a
    value written into YAML, a comment or a path the files name."""
    return sorted({repr(c)[1:-1] for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def comment_text(value) -> str:
    """A value placed inside a '#' comment line: every control character escaped, so it stays one line."""
    text = str(value)
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def _no_control(flag: str, value: str) -> None:
    bad = control_characters(value)
    if bad:
        raise DeployError(f"{flag} {value!r}: contains control character(s) {', '.join(bad)}; pass a value "
                          f"without newlines, tabs or other control characters")


def _matching(flag: str, value: str, pattern, max_len: int, what: str) -> str:
    """value if it has no control characters, fits max_len and matches pattern; else DeployError naming the flag."""
    _no_control(flag, value)
    if len(value) > max_len or not pattern.match(value):
        raise DeployError(f"{flag} {value!r}: {what}")
    return value


def check_dns_label(flag: str, value: str, max_len: int = DNS1123_LABEL_MAX) -> str:
    return _matching(flag, value, DNS1123_LABEL, max_len,
                     f"must be a DNS-1123 label: lowercase letters, digits and '-', at most "
                     f"{max_len} characters, starting and ending with a letter or digit")


def check_dns_subdomain(flag: str, value: str) -> str:
    return _matching(flag, value, DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MAX,
                     f"must be a DNS-1123 subdomain: lowercase letters, digits, '-' and "
                     f"'.', at most {DNS1123_SUBDOMAIN_MAX} characters, each dot-separated part starting and "
                     f"ending with a letter or digit")


def check_count(flag: str, value: int | None, lo: int = 1, hi: int = INT32_MAX) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DeployError(f"{flag} {value}: must be an integer in [{lo}, {hi}]"
                          + (" (a Kubernetes int32)" if hi == INT32_MAX else ""))
    return value


def check_image(flag: str, value: str) -> str:
    return _matching(flag, value, IMAGE_REFERENCE, IMAGE_NAME_MAX,
                     f"not an image reference ([registry[:port]/]name[:tag][@sha256:...], "
                     f"lowercase name, at most {IMAGE_NAME_MAX} characters), e.g. registry.example.com/"
                     f"gptoss-trt:0.1.0-gpu")


def check_label_value(flag: str, value: str) -> str:
    return _matching(flag, value, LABEL_VALUE, LABEL_VALUE_MAX,
                     f"not a Kubernetes label value (letters, digits, '-', '_', '.', at "
                     f"most {LABEL_VALUE_MAX} characters, starting and ending with a letter or digit)")


def check_bind(flag: str, value: str) -> str:
    _no_control(flag, value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise DeployError(f"{flag} {value!r}: not an IP address (compose publishes ports on a host address, e.g. "
                          f"127.0.0.1, or 0.0.0.0 for every interface)") from None
    return value


def check_ports(ports: dict) -> dict:
    """The data file's ports (deploy/data/deploy.yaml): named, 1-65535, distinct."""
    for name, port in ports.items():
        if not (isinstance(name, str) and DNS1123_LABEL.match(name) and len(name) <= 15):
            raise DeployError(f"deploy/data/deploy.yaml: port name {name!r} is not an IANA service name")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise DeployError(f"deploy/data/deploy.yaml: port {name} = {port!r}: must be an integer in [1, 65535]")
    if len(set(ports.values())) != len(ports):
        raise DeployError(f"deploy/data/deploy.yaml: ports {ports} are not distinct")
    return ports


def check_path(flag: str, path: Path) -> Path:
    """A path deploy-engine writes into a file (the engine's, in comments and bind mounts) or writes to."""
    _no_control(flag, str(path))
    return path


def check_wheel(flag: str, wheel: Path, expected_name: str) -> Path:
    """A real wheel of this project: the file name the Dockerfile copies, a zip archive, with a
    NAME-VERSION.dist-info/WHEEL metadata file that says Wheel-Version."""
    check_path(flag, wheel)
    if not wheel.is_file():
        raise DeployError(f"{flag} {wheel}: no such file (build it with `python -m pip wheel --no-deps -w dist .` "
                          f"in the project)")
    if wheel.name != expected_name:
        raise DeployError(f"{flag} {wheel}: the Dockerfile installs dist/{expected_name} (this project's version); "
                          f"pass that wheel, built with `python -m pip wheel --no-deps -w dist .`")
    dist_info = "-".join(expected_name.split("-")[:2]) + ".dist-info/WHEEL"
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(dist_info)
            except KeyError:
                raise DeployError(f"{flag} {wheel}: a zip archive without {dist_info}, so not a wheel (PEP 427); "
                                  f"build the wheel with `python -m pip wheel --no-deps -w dist .`") from None
            if info.file_size > WHEEL_METADATA_MAX:
                raise DeployError(f"{flag} {wheel}: {dist_info} is {info.file_size} bytes, not wheel metadata")
            text = z.read(info).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DeployError(f"{flag} {wheel}: not a zip archive, so not a wheel ({e}); build the wheel with "
                          f"`python -m pip wheel --no-deps -w dist .`") from None
    if not re.search(r"^Wheel-Version:\s*\d+\.\d+\s*$", text, re.M):
        raise DeployError(f"{flag} {wheel}: {dist_info} has no Wheel-Version line, so not a wheel's metadata")
    return wheel


def check_args(args, expected_wheel: str) -> None:
    """Every flag of deploy-engine that ends up in a file (names, counts, image, address, paths, wheel)."""
    check_path("ENGINE_DIR", args.engine_dir)
    check_path("--out", args.out)
    check_dns_label("--namespace", args.namespace)
    if args.name is not None:
        _no_control("--name", args.name)
    if args.engine_pvc is not None:
        check_dns_subdomain("--engine-pvc", args.engine_pvc)
    if args.gpu_product is not None:
        check_label_value("--gpu-product", args.gpu_product)
    if args.image is not None:
        check_image("--image", args.image)
    check_bind("--bind", args.bind)
    check_count("--replicas", args.replicas)
    check_count("--autoscale-max", args.autoscale_max)
    check_count("--gpus-per-node", args.gpus_per_node, hi=GPUS_PER_NODE_MAX)
    if args.wheel is not None:
        check_wheel("--wheel", args.wheel, expected_wheel)
