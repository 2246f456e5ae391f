#!/bin/sh
# A one-node Ceph cluster with an RGW on 127.0.0.1, by hand (issue 20; not run by CI).
#
#   apt-get install --no-install-recommends radosgw ceph-mon ceph-osd ceph-common
#   bench/rgw-one-node.sh start [DIR]   # prints the endpoint and the admin's keys
#   bench/rgw-one-node.sh stop [DIR]
#
# Debian 12's Ceph 16.2 (Pacific): one monitor, one OSD on memstore (RAM, no disk or
# LVM to prepare; its size is "memstore device bytes"), no manager (I/O needs none),
# pools of size 1, cephx keys in DIR, and radosgw's beast frontend on port 7480.  Everything lives in DIR (default /tmp/vmclient-ceph) and runs as root.
set -eu
cmd=${1:?start or stop}
D=${2:-/tmp/vmclient-ceph}
C="-c $D/ceph.conf"

stop() {
    for pid in "$D"/run/*.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi

stop 2>/dev/null || true
rm -rf "$D"
mkdir -p "$D/mon" "$D/osd" "$D/rgw" "$D/run"
fsid=$(cat /proc/sys/kernel/random/uuid)
cat > "$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:3300
public network = 127.0.0.0/8
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 4294967296
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/\$name.log
keyring = $D/keyring
[mon.a]
mon data = $D/mon
[osd.0]
osd data = $D/osd
keyring = $D/osd/keyring
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:7480
rgw data = $D/rgw
rgw init timeout = 60
keyring = $D/rgw.keyring
EOF
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' \
    --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
monmaptool --create --addv a '[v2:127.0.0.1:3300]' --fsid "$fsid" "$D/monmap" >/dev/null
ceph-mon $C --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
ceph-mon $C -i a
id=$(ceph $C osd create)
ceph-authtool --create-keyring "$D/osd/keyring" --gen-key -n "osd.$id" >/dev/null
ceph $C auth add "osd.$id" osd 'allow *' mon 'allow profile osd' -i "$D/osd/keyring"
ceph-osd $C -i "$id" --mkfs --osd-uuid "$(cat /proc/sys/kernel/random/uuid)" 2>/dev/null
ceph-osd $C -i "$id"
ceph $C auth get-or-create client.rgw mon 'allow rw' osd 'allow rwx' -o "$D/rgw.keyring"
radosgw $C -n client.rgw
access=VMCADMIN$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)
secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
for _ in $(seq 60); do  # radosgw makes its pools at its start
    if radosgw-admin $C user create --uid=admin --display-name=admin --admin \
            --access-key="$access" --secret-key="$secret" >/dev/null 2>&1; then
        echo "endpoint=http://127.0.0.1:7480 access_key=$access secret_key=$secret"
        exit 0
    fi
    sleep 2
done
echo "radosgw did not come up; see $D/*.log" >&2
exit 1
