#!/usr/bin/env bash
# Manual, opt-in check (not run by pytest): the unit under a real systemd as PID 1.
#
# Boots a throwaway systemd with systemd-nspawn over an overlay of this machine's root (all
# writes go to a tmpfs and vanish; private network) and runs edge-agent there as on a board:
# install.sh --wheelhouse, READY, watchdog pings past WatchdogSec, `systemctl reload` with a
# good and a broken config, a hung pipeline restarted by the watchdog, stop. Takes ~2 minutes.
# Needs root, systemd-container (apt) and mosquitto.
#
#   deploy/wheelhouse.sh --machine "$(uname -m)" --out /tmp/bundle
#   sudo tests/systemd_nspawn_check.sh /tmp/bundle
# The quoted command strings are expanded inside the container, on purpose.
# shellcheck disable=SC2016
set -euo pipefail
BUNDLE=$(cd "$1" && pwd)
W=$(mktemp -d /tmp/sd-e2e.XXXX)
mkdir -p "$W/rw" "$W/merged"
mount -t tmpfs -o size=3G tmpfs "$W/rw"
mkdir -p "$W/rw/upper" "$W/rw/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/rw/upper,workdir=$W/rw/work" "$W/merged"
cleanup() {
    [ -z "${LEADER:-}" ] || nsenter -t "$LEADER" -a systemctl poweroff 2>/dev/null || true
    [ -z "${NSPAWN:-}" ] || { for _ in $(seq 30); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 1; done; kill "$NSPAWN" 2>/dev/null || true; }
    umount "$W/merged" 2>/dev/null || true; umount "$W/rw" 2>/dev/null || true; rm -rf "$W"
    rmdir /run/systemd/nspawn/propagate/* /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn /run/mount 2>/dev/null || true
}
trap cleanup EXIT
cp -r "$BUNDLE" "$W/merged/root/bundle"
systemd-nspawn -D "$W/merged" --register=no --keep-unit --link-journal=no --private-network --console=pipe --boot >"$W/nspawn.log" 2>&1 &
NSPAWN=$!
for _ in $(seq 30); do LEADER=$(ps --ppid "$NSPAWN" -o pid= | tr -d ' ' || true); [ -n "$LEADER" ] && break; sleep 0.5; done
inside() { nsenter -t "$LEADER" -a /bin/bash -c "$1"; }
for _ in $(seq 60); do state=$(inside 'systemctl is-system-running' 2>/dev/null || true); case "$state" in running|degraded) break ;; esac; sleep 1; done
echo "container systemd: $state"
inside 'env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null /root/bundle/deploy/install.sh --wheelhouse /root/bundle/wheels | tail -4'
inside 'sed -i "s#^source = .*#source = { uri = \"/opt/edge-agent/models/demo/digits-demo.avi\", loop = true }#; s/^max_fps = 5 /max_fps = 20/" /etc/edge-agent/agent.toml
    mosquitto_passwd -b -c /etc/mosquitto/passwd edge s3cret >/dev/null 2>&1; chown mosquitto: /etc/mosquitto/passwd
    printf "listener 1883 localhost\nallow_anonymous false\npassword_file /etc/mosquitto/passwd\n" > /etc/mosquitto/conf.d/auth.conf
    systemctl restart mosquitto
    printf "s3cret\n" > /etc/edge-agent/mqtt_password
    sed -i "s|^# username = \"edge\"|username = \"edge\"\npassword_file = \"/run/credentials/edge-agent.service/mqtt_password\"|" /etc/edge-agent/agent.toml'
echo "--- start"
inside 'time systemctl start edge-agent; systemctl show edge-agent -p ActiveState -p StatusText'
inside 'journalctl -u edge-agent -o cat --no-pager | grep -E "MQTT|XNNPACK" | head -3'
sleep 35
echo "--- after 35 s (WatchdogSec=30)"
inside 'systemctl show edge-agent -p ActiveState -p NRestarts -p WatchdogTimestamp -p StatusText; systemd-analyze security edge-agent --no-pager | tail -1'
inside 'grep -E "^(Seccomp|NoNewPrivs|CapBnd|Groups)" /proc/$(systemctl show -p MainPID --value edge-agent)/status | tr "\n" " "; echo'
echo "--- reload (valid config, max_fps changed)"
inside 'pid=$(systemctl show -p MainPID --value edge-agent); sed -i "s/^max_fps = 20/max_fps = 10/" /etc/edge-agent/agent.toml; systemctl reload edge-agent; sleep 3
    echo "pid $pid -> $(systemctl show -p MainPID --value edge-agent), $(systemctl is-active edge-agent)"; journalctl -u edge-agent -o cat --no-pager | grep -i reload | tail -3'
echo "--- reload (broken config)"
inside 'echo "this is = = not toml" >> /etc/edge-agent/agent.toml; systemctl reload edge-agent; sleep 2; echo "$(systemctl is-active edge-agent)"; journalctl -u edge-agent -o cat --no-pager | grep -i "reload rejected" | tail -1 | cut -c1-160
    sed -i "/this is = = not toml/d" /etc/edge-agent/agent.toml'
echo "--- a hung pipeline (an image source that is a FIFO: imread blocks for ever)"
inside 'mkfifo /var/lib/edge-agent/hang.jpg; chown edge-agent: /var/lib/edge-agent/hang.jpg
    printf "\n[pipelines.stuck]\nsource = \"/var/lib/edge-agent/hang.jpg\"\nmodel = \"/opt/edge-agent/models/demo/digits_int8.tflite\"\n" >> /etc/edge-agent/agent.toml
    systemctl reset-failed edge-agent; systemctl restart edge-agent; echo "restarted $(date +%T)"
    for i in $(seq 100); do sleep 1; [ "$(systemctl show -p NRestarts --value edge-agent)" != 0 ] && break; done
    echo "NRestarts=$(systemctl show -p NRestarts --value edge-agent) at $(date +%T)"
    journalctl -u edge-agent -o short-precise --no-pager | grep -E "no heartbeat|Watchdog timeout|Scheduled restart" | tail -3'
echo "--- stop"
inside 'time systemctl stop edge-agent; systemctl show edge-agent -p Result -p ExecMainStatus'
