# QEMU for the vmclient host (distro override "vmclient" only: adding the
# layer changes nothing elsewhere).  provd defines every domain with SPICE
# graphics and USB redirection channels: without "spice" and "usb-redir"
# libvirt refuses them.  The host draws no QEMU window of its own (the
# display stack is a separate concern), so no SDL and no virgl/epoxy.
PACKAGECONFIG:append:class-target:vmclient = " spice usb-redir"
PACKAGECONFIG:remove:class-target:vmclient = "sdl virglrenderer epoxy"
