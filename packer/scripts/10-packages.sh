#!/usr/bin/env bash
# Packages of the shared host: docker engine + containerd (Ubuntu's archive), auditd,
# AppArmor, AIDE, unattended upgrades, iptables, and the CloudWatch agent.
set -euxo pipefail

apt-get update -q
apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade
apt-get -y -q install --no-install-recommends \
  docker.io containerd runc uidmap \
  auditd audispd-plugins apparmor apparmor-utils \
  aide aide-common unattended-upgrades \
  iptables iproute2 conntrack chrony e2fsprogs nvme-cli jq curl ca-certificates rsyslog

# Remove what a shared host never needs; sshd goes too (access is SSM Session Manager only).
apt-get -y -q purge telnet ftp rsh-client talk whoopsie apport popularity-contest openssh-server || true
apt-get -y -q autoremove --purge

# CloudWatch agent (ships audit, auth, syslog and the m8trx daemons' logs). It comes from
# AWS, not from the distribution: the VM test tier (no route outside the test machine) sets
# M8TRX_SKIP_AWS=1 to skip exactly this step.
if [ "${M8TRX_SKIP_AWS:-0}" = 1 ]; then
  echo "M8TRX_SKIP_AWS=1: CloudWatch agent not installed"
else
  curl -fsSLo /tmp/amazon-cloudwatch-agent.deb \
    https://s3.amazonaws.com/amazoncloudwatch-agent/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb
  dpkg -i /tmp/amazon-cloudwatch-agent.deb
  rm -f /tmp/amazon-cloudwatch-agent.deb
fi
