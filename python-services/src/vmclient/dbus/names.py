"""Every D-Bus name vmclient uses: ours and the peers'."""

BUS_NAME = "org.vmclient.VMClient1"
ROOT_PATH = "/org/vmclient/VMClient1"

POWER_PATH = ROOT_PATH + "/Power"
POWER_IFACE = BUS_NAME + ".Power"

# vmclient-provd owns a name of its own, so it starts, stops and is activated
# independently of vmclient-powerd (docs/dbus-api.md).
PROVISION_BUS_NAME = BUS_NAME + ".Provisioning"
PROVISION_PATH = ROOT_PATH + "/Provisioning"
PROVISION_IFACE = BUS_NAME + ".Provisioning"

# vmclient-provd also hands out the VMs' displays to the shell (docs/shell.md).
DISPLAY_PATH = ROOT_PATH + "/Display"
DISPLAY_IFACE = BUS_NAME + ".Display"

# vmclient-syncd: the Synchronizer and the host of the management agent.
SYNC_BUS_NAME = BUS_NAME + ".Sync"
SYNC_PATH = ROOT_PATH + "/Sync"
SYNC_IFACE = BUS_NAME + ".Sync"

# ... and the management agent's own object: enrolment (the shell's first start).
MANAGE_PATH = ROOT_PATH + "/Management"
MANAGE_IFACE = BUS_NAME + ".Management"

# Error names: vmclient.errors.DBUS_ERROR_PREFIX + the error's name (each error class's
# dbus_name; errors.py is below this package, so the prefix is defined there).

# polkit actions (data/polkit-1/actions/org.vmclient.VMClient1.policy)
POLKIT_ACTION_POWER_MANAGE = "org.vmclient.VMClient1.power.manage"
POLKIT_ACTION_PROVISION_MANAGE = "org.vmclient.VMClient1.provision.manage"
POLKIT_ACTION_SYNC_MANAGE = "org.vmclient.VMClient1.sync.manage"
# The seat's active session (the shell) and the group may see and drive the VMs' screens.
POLKIT_ACTION_OPEN_DISPLAY = "org.vmclient.VMClient1.open-display"

# The seat's active session (the shell's first start) may enrol the laptop with IT's code.
POLKIT_ACTION_ENROL = "org.vmclient.VMClient1.enrol"
# ... and set its own first password (the daemon refuses once the account has one).
POLKIT_ACTION_FIRST_PASSWORD = "org.vmclient.VMClient1.first-password"

# Unix group whose members may call the methods (bus policy + polkit rule).
ADMIN_GROUP = "vmclient"

# Peers
LOGIND_BUS = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"

POLKIT_BUS = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"

DBUS_BUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DBUS_IFACE = "org.freedesktop.DBus"
