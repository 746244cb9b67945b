#!/bin/sh
# Runs once inside the server VM (imgbuild-vmtest.service), from the read-only payload disk: installs the package
# with dpkg as an operator would, writes /etc/imgbuild/cluster.toml for the lab's network, gives the server the
# lab's provisioning CA (the images carry its certificate), runs `imgbuild secrets init` and `imgbuild pin` as
# the imgbuild user, starts imgbuild.service (Type=notify: `systemctl start` returns once it reported ready),
# reloads it, and prints what tests/lab_boot/server_vm.rs asserts: one `IMGBUILD-VM key=value` line each.
set -u
p=/mnt/payload
say() { echo "IMGBUILD-VM $*"; }
journal() { journalctl -u imgbuild --no-pager -o cat -n "$1" 2>&1 | sed 's/^/IMGBUILD-VM journal: /'; }
fail() {
    say "failed=$*"
    journal 40
    exit 1
}
cd /
say "booted=$(cut -d' ' -f1 /proc/uptime)"
dpkg -i "$p"/imgbuild.deb >/run/dpkg.log 2>&1 || { cat /run/dpkg.log; fail "dpkg -i"; }
say "installed=$(dpkg-query -W -f '${Version}' imgbuild)"
say "unit-enabled=$(systemctl is-enabled imgbuild 2>&1)"
install -m 0644 "$p"/cluster.toml /etc/imgbuild/cluster.toml
if [ -f "$p"/imgbuild.lock ]; then install -m 0644 "$p"/imgbuild.lock /etc/imgbuild/imgbuild.lock; fi
install -o imgbuild -g imgbuild -m 0600 "$p"/ca/* /var/lib/imgbuild/secrets/
runuser -u imgbuild -- imgbuild secrets init >/run/secrets.log 2>&1 || { cat /run/secrets.log; fail "imgbuild secrets init"; }
find /var/lib/imgbuild/secrets -exec stat -c 'IMGBUILD-VM secret=%a %U:%G %n' {} +
runuser -u imgbuild -- imgbuild pin master "$(cat "$p"/master-id)" || fail "imgbuild pin"
say "starting=$(cut -d' ' -f1 /proc/uptime)"
systemctl start imgbuild || fail "systemctl start imgbuild"
say "started=$(cut -d' ' -f1 /proc/uptime)"
systemctl show -p Type -p ActiveState -p SubState -p NRestarts -p WatchdogUSec -p User imgbuild | sed 's/^/IMGBUILD-VM unit./'
pid=$(systemctl show -p MainPID --value imgbuild)
say "MainPID=$pid"
say "comm=$(cat /proc/"$pid"/comm)"
grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/"$pid"/status |
    tr -s '\t' ' ' | sed 's/^\([A-Za-z]*\): */IMGBUILD-VM proc.\1=/'
say "imgbuild-uid=$(id -u imgbuild)"
systemctl reload imgbuild || fail "systemctl reload imgbuild"
say "after-reload=$(systemctl is-active imgbuild) pid=$(systemctl show -p MainPID --value imgbuild)"
journal 15
say "ready"
