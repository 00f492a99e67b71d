#!/bin/sh
# Add (or replace) a broker user with a random password, and write that password to a file for the
# client: a board (user = its device_id; install the file as /etc/edge-agent/mqtt_password, mode 0600),
# the workstation (`push --username workstation --password-file FILE`) or a consumer.
#   sudo deploy/mosquitto/add-user.sh kitchen-pi  kitchen-pi.password
#   sudo deploy/mosquitto/add-user.sh workstation workstation.password
set -eu
[ $# -eq 2 ] || { echo "usage: $0 USER PASSWORD_FILE_TO_WRITE" >&2; exit 2; }
user=$1
out=$2
passwd_file=${EDGE_AGENT_PASSWD_FILE:-/etc/mosquitto/edge-agent.passwd}
case "$user" in *[/+#\ ]*|"") echo "$0: a user name has no '/', '+', '#' or spaces" >&2; exit 2 ;; esac
umask 077
password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
[ -f "$passwd_file" ] || : > "$passwd_file"
mosquitto_passwd -b "$passwd_file" "$user" "$password"
printf '%s\n' "$password" > "$out"
echo "added $user to $passwd_file; its password is in $out (give it to that client only)"
echo "then: sudo systemctl reload mosquitto  (or restart)"
