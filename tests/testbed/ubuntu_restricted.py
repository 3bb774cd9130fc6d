"""Stand-ins of Ubuntu's 570-server driver in the restricted component of the Ubuntu archive stand-in
(http://archive.ubuntu.com/ubuntu noble restricted), for `nvidia_driver_source: ubuntu` on Secure Boot hosts.

Names and dependency shapes follow packages.ubuntu.com and Canonical's packaging
(https://github.com/canonical/nvidia-graphics-drivers/blob/570-server-noble/debian/templates/control.in, as of commit
4e3d1c29, before the 580 transitionals): nvidia-driver-570-server[-open] depends on nvidia-dkms-570-server[-open] (a
module built on the host by DKMS: unsigned, so it does not load under Secure Boot), nvidia-utils-570-server and
nvidia-compute-utils-570-server; nvidia-headless-no-dkms-570-server[-open] (what `ubuntu-drivers --gpgpu` installs)
depends on nvidia-kernel-common-570-server and nvidia-compute-utils-570-server, NOT on DKMS nor nvidia-utils (nvidia-smi);
linux-restricted-modules builds linux-modules-nvidia-570-server[-open]-<kernel release> with Canonical's signed modules
and the flavour metapackage linux-modules-nvidia-570-server[-open]-<flavour> depending on the current kernel's.
Simplified: the real metapackages depend on many more libnvidia-*-570-server libraries. The guests run this machine's
kernel, so the modules package is built for `uname -r` here; its postinst marks the module signed
(tests/testbed/secure_boot.py: it loads under Secure Boot, DKMS builds do not).
"""

from __future__ import annotations

import os

from .repos import (
    DEBS_SRC,
    DKMS_POSTINST,
    DKMS_POSTRM,
    MODULE_UNIT,
    PERSISTENCED,
    PERSISTENCED_UNIT,
    Deb,
    _virtual,
)

COMPONENT = "restricted"
# 570-server releases the stand-in archive offers (Ubuntu's noble-updates version scheme)
UBUNTU_570 = ("570.172.08", "570.195.03")
TRANSITIONAL_570 = "570.211.01"


def ubuntu_version(upstream: str) -> str:
    return f"{upstream}-0ubuntu0.24.04.1"


SIGNED_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  mkdir -p /var/lib/gpu-llm-testbed
  echo {ver} > /var/lib/gpu-llm-testbed/installed-driver
  echo canonical > /var/lib/gpu-llm-testbed/module-signed  # signed by Canonical: loads under Secure Boot
  touch /var/run/reboot-required
  echo "{pkg}" >> /var/run/reboot-required.pkgs
  systemctl enable gpu-llm-testbed-nvidia-module.service >/dev/null 2>&1 || true
fi
"""


def kernel_release() -> str:
    return os.uname().release


def restricted_debs(repo_key: bytes, kernel: str | None = None) -> list[tuple[str, Deb]]:
    """(component, Deb) stand-ins of Ubuntu's 570-server driver and Canonical's signed modules for `kernel`."""
    from gpu_llm.plan.datacenter import kernel_flavour

    del repo_key  # the archive's own Release signature covers these
    kernel = kernel or kernel_release()
    flavour = kernel_flavour(kernel)
    smi = (DEBS_SRC / "nvidia_smi.py").read_text()
    debs: list[Deb] = []
    for upstream in UBUNTU_570:
        ver = ubuntu_version(upstream)
        debs += [
            # the boot unit that "loads" whichever module is installed (signed build or DKMS's) comes with the
            # package both depend on
            Deb("nvidia-kernel-common-570-server", ver, files={
                "/usr/lib/systemd/system/gpu-llm-testbed-nvidia-module.service": (MODULE_UNIT, 0o644)}),
            *(Deb(f"nvidia-dkms-570-server{fl}", ver, control={
                **_virtual("nvidia-dkms-kernel"), "Depends": f"nvidia-kernel-common-570-server (= {ver})"},
                scripts={"postinst": DKMS_POSTINST.format(ver=upstream, pkg=f"nvidia-dkms-570-server{fl}"),
                         "postrm": DKMS_POSTRM.format(ver=upstream)},
                description="Builds the module on the host (unsigned: Secure Boot rejects it).") for fl in ("", "-open")),
            Deb("nvidia-utils-570-server", ver, control=_virtual("nvidia-utils"),
                files={"/usr/bin/nvidia-smi": (smi, 0o755)}),
            Deb("nvidia-compute-utils-570-server", ver, control=_virtual("nvidia-compute-utils"),
                files={"/usr/bin/nvidia-persistenced": (PERSISTENCED, 0o755),
                       "/usr/lib/systemd/system/nvidia-persistenced.service": (PERSISTENCED_UNIT, 0o644)}),
            *(Deb(f"nvidia-driver-570-server{fl}", ver, control={
                **_virtual("nvidia-driver-binary"),
                "Depends": f"nvidia-utils-570-server (= {ver}), nvidia-compute-utils-570-server (= {ver}), "
                           f"nvidia-dkms-570-server{fl} (= {ver}), nvidia-kernel-common-570-server (= {ver})"})
              for fl in ("", "-open")),
            *(Deb(f"nvidia-headless-no-dkms-570-server{fl}", ver, control={
                "Depends": f"nvidia-compute-utils-570-server (= {ver}), nvidia-kernel-common-570-server (= {ver})"})
              for fl in ("", "-open")),
        ]
    # a 570 "release" that is a transitional package pulling the 580 driver, as Ubuntu turned several 570 packages
    # into (packages.ubuntu.com: nvidia-fabricmanager-dev-570 570.211.01-0ubuntu1.24.04.1 depends on -580)
    for name in ("nvidia-driver-570-server-open", "nvidia-headless-no-dkms-570-server-open", "nvidia-utils-570-server"):
        debs.append(Deb(name, ubuntu_version(TRANSITIONAL_570), arch="amd64",
                        control={"Depends": name.replace("570", "580")},
                        description="Transitional package pulling the 580 driver (stand-in)."))
    # one build of the signed modules per kernel, against the newest 570 (as the archive has it)
    newest = UBUNTU_570[-1]
    mod_ver = kernel.split("-")[0] + "+1"
    per_kernel = f"linux-modules-nvidia-570-server-open-{kernel}"
    for upstream in UBUNTU_570:  # a build for each release in the stand-in, so the pinned one can be had
        debs.append(Deb(per_kernel, f"{mod_ver}.{UBUNTU_570.index(upstream)}", control={
            "Depends": f"nvidia-kernel-common-570-server (>= {ubuntu_version(upstream)})"},
            scripts={"postinst": SIGNED_POSTINST.format(ver=upstream, pkg=per_kernel),
                     "postrm": DKMS_POSTRM.format(ver=upstream)},
            description=f"Canonical-signed modules of driver {upstream} for {kernel} (stand-in)."))
    debs.append(Deb(f"linux-modules-nvidia-570-server-open-{flavour}", mod_ver, control={
        "Depends": f"{per_kernel}"}, description=f"Flavour metapackage (driver {newest} series)."))
    return [(COMPONENT, d) for d in debs]
