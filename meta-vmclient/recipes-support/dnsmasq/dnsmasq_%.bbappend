# libvirt runs a dnsmasq of its own per virtual network; the system-wide
# dnsmasq.service would bind port 53 on every interface, libvirt's bridges
# included, and collide with them (distro override "vmclient" only).
SYSTEMD_AUTO_ENABLE:${PN}:vmclient = "disable"
