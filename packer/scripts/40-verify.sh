#!/usr/bin/env bash
# Checks that need the real target system (systemd as PID 1, the Ubuntu kernel), which
# `make test` cannot run: the unit files, the firewall rules, the AppArmor template, the
# auditd rules and the sysctls are each loaded or verified here, on the builder.
set -euxo pipefail

systemd-analyze verify /etc/systemd/system/hostd.service /etc/systemd/system/sni-proxy.service \
  /etc/systemd/system/cred-broker.service /etc/systemd/system/m8trx-broker-if.service \
  /etc/systemd/system/m8trx-firewall.service /etc/systemd/system/m8trx-cwagent-config.service \
  /etc/systemd/system/m8trx-instance-env.service
# systemd's own exposure score, printed into the build log (Ubuntu 22.04's systemd 249
# has no --threshold, so the hardening keys themselves are asserted by scripts/infra).
systemd-analyze security --no-pager sni-proxy.service cred-broker.service hostd.service || true

iptables-restore --test --noflush /etc/m8trx/iptables/host.rules
ip6tables-restore --test --noflush /etc/m8trx/iptables/host6.rules

# The template with a sample tenant must compile (hostd renders the real ones).
sed -e 's/{{NAME}}/sample/g' -e 's/{{PROFILE}}/m8trx-tenant-sample/g' -e 's#{{TENANTS_ROOT}}#/srv/m8trx/tenants#g' \
  -e '/{{DENY_OTHER_TENANTS}}/d' \
  /etc/m8trx/apparmor/tenant.profile.tmpl >/tmp/m8trx-tenant-sample
apparmor_parser --skip-kernel-load --skip-cache -Q /tmp/m8trx-tenant-sample
rm -f /tmp/m8trx-tenant-sample

augenrules --check || augenrules --load
# The loader that applies the file at boot: it honours '-' (keys absent on this kernel, such as
# kernel.io_uring_disabled before 6.6), where procps' `sysctl --load` fails on them.
/lib/systemd/systemd-sysctl /etc/sysctl.d/99-m8trx-shared-host.conf

systemctl start m8trx-firewall.service m8trx-broker-if.service
ip -4 addr show dev m8trx-broker | grep -q 169.254.170.23/32
iptables -t raw -C PREROUTING -j M8TRX-HOST-RAW
