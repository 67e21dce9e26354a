#!/usr/bin/env bash
# The m8trx host: service users, binaries, hardened units, the broker's dummy interface,
# the IMDS drop rules, the tenant seccomp profile and AppArmor template.
set -euxo pipefail
S=${M8TRX_STAGING:?}

# Unprivileged service users (no shell, no home).
for u in m8trx-sni m8trx-broker; do
  id "$u" >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
done

install -o root -g root -m 0755 "$S/bin/hostd" "$S/bin/sni-proxy" "$S/bin/cred-broker" /usr/local/bin/
install -o root -g root -m 0755 "$S/sbin/m8trx-firewall" "$S/sbin/m8trx-cwagent-config" "$S/sbin/m8trx-instance-env" /usr/local/sbin/
install -o root -g root -m 0644 "$S/sbin/rsyslog-m8trx.conf" /etc/rsyslog.d/30-m8trx.conf
install -o root -g root -m 0644 "$S/sbin/tmpfiles-m8trx.conf" /etc/tmpfiles.d/m8trx.conf
systemd-tmpfiles --create /etc/tmpfiles.d/m8trx.conf
# rsyslog writes as `syslog` on Ubuntu (PrivDropToUser) and as root on Debian.
if id -u syslog >/dev/null 2>&1; then rsyslog_user=syslog; else rsyslog_user=root; fi
install -d -o "$rsyslog_user" -g adm -m 0750 /var/log/m8trx-daemons

install -d -o root -g root -m 0755 /etc/m8trx /etc/m8trx/seccomp /etc/m8trx/apparmor /etc/m8trx/iptables
install -o root -g root -m 0644 "$S/profiles/tenant.json" /etc/m8trx/seccomp/tenant.json
install -o root -g root -m 0644 "$S/profiles/tenant.profile.tmpl" /etc/m8trx/apparmor/tenant.profile.tmpl
install -o root -g root -m 0644 "$S/iptables/host.rules" "$S/iptables/host6.rules" /etc/m8trx/iptables/
# Tenant volumes mount at /srv/m8trx/tenants/<name> (0700, owned by the tenant's remapped
# root). Each tenant's dockerd runs as that remapped root for its data root there, and
# dockerd refuses a data root whose ancestors it cannot traverse: so the two levels above are
# traverse-only for others (0711: no listing of the tenants), never readable.
install -d -o root -g root -m 0711 /srv/m8trx /srv/m8trx/tenants
install -d -o root -g root -m 0700 /var/lib/m8trx

# What hostd reads at boot besides the instance's own id and region (m8trx-instance-env.service):
# the tailscale sidecar image, pinned by digest (packer variable tailscale_image).
umask 022
if [ -n "${M8TRX_TAILSCALE_IMAGE:-}" ]; then
  printf 'HOSTD_TAILSCALE_IMAGE=%s\n' "$M8TRX_TAILSCALE_IMAGE" >/etc/m8trx/hostd.env
else
  printf '# no tailscale sidecar image given at build time: agent tenants get no sidecar\n' >/etc/m8trx/hostd.env
fi
chmod 0644 /etc/m8trx/hostd.env

for unit in hostd.service sni-proxy.service cred-broker.service m8trx-broker-if.service m8trx-firewall.service m8trx-cwagent-config.service m8trx-instance-env.service; do
  install -o root -g root -m 0644 "$S/systemd/$unit" "/etc/systemd/system/$unit"
done
# Container scopes get docker stop's 10 s at shutdown, not systemd's 90 s (see the file).
install -d -o root -g root -m 0755 /etc/systemd/system/docker-.scope.d
install -o root -g root -m 0644 "$S/systemd/docker-scope-stop.conf" /etc/systemd/system/docker-.scope.d/10-m8trx-stop.conf
systemctl daemon-reload
systemctl enable m8trx-firewall.service m8trx-broker-if.service hostd.service sni-proxy.service cred-broker.service \
  m8trx-cwagent-config.service m8trx-instance-env.service
