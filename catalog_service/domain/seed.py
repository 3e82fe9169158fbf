"""What a new catalog holds: the regions, and the public and marketplace images in them."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime

from catalog_service.domain.model import (
    PLATFORM_ACCOUNT_ID,
    Architecture,
    Image,
    ImageSource,
    ImageState,
    ImageType,
    OsType,
    Region,
)

REGIONS = [
    Region("ap-guangzhou", "South China (Guangzhou)", mainland=True, sync_enabled=True),
    Region("ap-shanghai", "East China (Shanghai)", mainland=True, sync_enabled=True),
    Region("ap-beijing", "North China (Beijing)", mainland=True, sync_enabled=True),
    Region("ap-hongkong", "Hong Kong, China", mainland=False, sync_enabled=True),
    Region("ap-singapore", "Southeast Asia (Singapore)", mainland=False, sync_enabled=False),
    Region("na-siliconvalley", "US West (Silicon Valley)", mainland=False, sync_enabled=False),
    Region("na-ashburn", "US East (Virginia)", mainland=False, sync_enabled=False),
    Region("eu-frankfurt", "Europe (Frankfurt)", mainland=False, sync_enabled=False),
]

# (key, name, platform, os_name, os_type, architecture, size_gb)
_PUBLIC = [
    ("ubuntu-2204-x86", "Ubuntu Server 22.04 LTS 64bit", "Ubuntu", "Ubuntu Server 22.04 LTS 64bit",
     OsType.LINUX, Architecture.X86_64, 20),
    ("ubuntu-2204-arm", "Ubuntu Server 22.04 LTS 64bit (Arm)", "Ubuntu", "Ubuntu Server 22.04 LTS 64bit",
     OsType.LINUX, Architecture.ARM64, 20),
    ("debian-12-x86", "Debian 12.5 64bit", "Debian", "Debian 12.5 64bit", OsType.LINUX, Architecture.X86_64, 20),
    ("debian-12-arm", "Debian 12.5 64bit (Arm)", "Debian", "Debian 12.5 64bit", OsType.LINUX,
     Architecture.ARM64, 20),
    ("tencentos-31-x86", "TencentOS Server 3.1 (TK4)", "TencentOS", "TencentOS Server 3.1 (TK4)",
     OsType.LINUX, Architecture.X86_64, 20),
    ("windows-2022-x86", "Windows Server 2022 Datacenter 64bit", "Windows",
     "Windows Server 2022 Datacenter 64bit English", OsType.WINDOWS, Architecture.X86_64, 50),
]

# (key, name, provider, provider account, product id, platform, os_name, os_type, size_gb)
MARKETPLACE_PROVIDERS = {"Bitnami": "200000000001", "BT Panel": "200000000002"}
_MARKET = [
    ("wordpress", "WordPress 6.4 on Ubuntu 22.04", "Bitnami", "mp-bitnami-wordpress", "Ubuntu",
     "Ubuntu Server 22.04 LTS 64bit", OsType.LINUX, 30),
    ("lamp", "LAMP stack on Debian 12", "Bitnami", "mp-bitnami-lamp", "Debian", "Debian 12.5 64bit",
     OsType.LINUX, 20),
    ("btpanel", "BT Panel 8.0 (Linux)", "BT Panel", "mp-btpanel-linux", "CentOS", "CentOS 7.9 64bit",
     OsType.LINUX, 40),
]

_SEED_TIME = datetime(2026, 1, 1, tzinfo=UTC)
SEED_DISK_BYTES = 64 << 10


@functools.cache
def seed_disk(key: str) -> bytes:
    """The bytes of a seeded image's disk: small, generated, the same in every region and on every
    replica, so that create, sync and launch run on real bytes from the first start."""
    header = f"cloudimg seed disk {key}\n".encode().ljust(512, b"\0")
    block = hashlib.sha256(key.encode()).digest() * 128  # 4 KiB
    return (header + block * (SEED_DISK_BYTES // len(block)))[:SEED_DISK_BYTES]


@functools.cache
def seed_checksum(key: str) -> str:
    return hashlib.sha256(seed_disk(key)).hexdigest()


def seed_disks() -> list[tuple[str, str, bytes]]:
    """(region, checksum, bytes) of every seeded image's disk."""
    return [(region.region_id, seed_checksum(key), seed_disk(key))
            for region in REGIONS for key in _keys_in(region)]


def _keys_in(region: Region) -> list[str]:
    return [p[0] for p in _PUBLIC] + ([m[0] for m in _MARKET] if region.mainland else [])
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def seed_image_id(region: str, key: str) -> str:
    """A stable id per region and seeded image, so that every replica seeds the same rows."""
    number = int.from_bytes(hashlib.sha256(f"{region}/{key}".encode()).digest()[:8], "big")
    chars = []
    for _ in range(8):
        number, digit = divmod(number, 36)
        chars.append(_ID_ALPHABET[digit])
    return "img-" + "".join(chars)


def seed_images() -> list[Image]:
    images = []
    for region in REGIONS:
        for key, name, platform, os_name, os_type, arch, size in _PUBLIC:
            images.append(Image(
                seed_image_id(region.region_id, key), region.region_id, ImageType.PUBLIC, ImageState.NORMAL,
                name, f"{name}, provided by the platform", PLATFORM_ACCOUNT_ID, platform, os_name, os_type,
                arch, size, ImageSource.OFFICIAL, "", 100, _SEED_TIME, checksum_sha256=seed_checksum(key),
            ))
        if not region.mainland:
            continue
        for key, name, provider, product, platform, os_name, os_type, size in _MARKET:
            images.append(Image(
                seed_image_id(region.region_id, key), region.region_id, ImageType.MARKET, ImageState.NORMAL,
                name, f"{name}, by {provider}", MARKETPLACE_PROVIDERS[provider], platform, os_name, os_type,
                Architecture.X86_64, size, ImageSource.OFFICIAL, "", 100, _SEED_TIME,
                marketplace_product_id=product, marketplace_provider=provider, checksum_sha256=seed_checksum(key),
            ))
    return images


# The demo accounts' own custom images, in ap-guangzhou:
# (owner, key, name, base key, platform, os_name, os_type, architecture, size_gb, product, provider)
DEMO_ACCOUNT_IDS = ("100000000001", "100000000002")
_DEMO_CUSTOM = [
    ("100000000001", "alice-web", "alice web server golden image", "ubuntu-2204-x86", "Ubuntu",
     "Ubuntu Server 22.04 LTS 64bit", OsType.LINUX, Architecture.X86_64, 20, "", ""),
    ("100000000001", "alice-blog", "alice blog (from WordPress)", "wordpress", "Ubuntu",
     "Ubuntu Server 22.04 LTS 64bit", OsType.LINUX, Architecture.X86_64, 30, "mp-bitnami-wordpress", "Bitnami"),
    ("100000000002", "bob-arm", "bob arm64 build box", "ubuntu-2204-arm", "Ubuntu",
     "Ubuntu Server 22.04 LTS 64bit", OsType.LINUX, Architecture.ARM64, 20, "", ""),
]
DEMO_REGION = "ap-guangzhou"


def demo_custom_images() -> list[Image]:
    return [
        Image(
            seed_image_id(DEMO_REGION, key), DEMO_REGION, ImageType.CUSTOM, ImageState.NORMAL, name,
            f"{name} (demo)", owner, platform, os_name, os_type, arch, size, ImageSource.INSTANCE,
            seed_image_id(DEMO_REGION, base), 100, _SEED_TIME,
            marketplace_product_id=product, marketplace_provider=provider, checksum_sha256=seed_checksum(base),
        )
        for owner, key, name, base, platform, os_name, os_type, arch, size, product, provider in _DEMO_CUSTOM
    ]
