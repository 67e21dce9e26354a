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
install -o root -g root -m 0755 "$S/sbin/m8trx-firewall" "$S/sbin/m8trx-cwagent-config" /usr/local/sbin/
install -o root -g root -m 0644 "$S/sbin/rsyslog-m8trx.conf" /etc/rsyslog.d/30-m8trx.conf
install -d -o syslog -g adm -m 0750 /var/log/m8trx-daemons

install -d -o root -g root -m 0755 /etc/m8trx /etc/m8trx/seccomp /etc/m8trx/apparmor /etc/m8trx/iptables
install -o root -g root -m 0644 "$S/profiles/tenant.json" /etc/m8trx/seccomp/tenant.json
install -o root -g root -m 0644 "$S/profiles/tenant.profile.tmpl" /etc/m8trx/apparmor/tenant.profile.tmpl
install -o root -g root -m 0644 "$S/iptables/host.rules" "$S/iptables/host6.rules" /etc/m8trx/iptables/
install -d -o root -g root -m 0700 /srv/m8trx /srv/m8trx/tenants /var/lib/m8trx

for unit in hostd.service sni-proxy.service cred-broker.service m8trx-broker-if.service m8trx-firewall.service m8trx-cwagent-config.service; do
  install -o root -g root -m 0644 "$S/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable m8trx-firewall.service m8trx-broker-if.service hostd.service sni-proxy.service cred-broker.service \
  m8trx-cwagent-config.service
