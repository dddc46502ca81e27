#!/usr/bin/env bash
# The main job, end to end: installs what is missing, starts a loopback RabbitMQ, builds,
# starts compute-agent with the libvirt plugin on libvirt's test:///default driver, then
# drives one instance through its life with computectl — every action of the state table,
# a refused one, a lock, a snapshot, a resize, a SIGKILL of the agent and its recovery —
# printing each state and the capabilities the agent fans out to the scheduler; then boots
# from a real Glance through the glance plugin (verified download, _base cache, overlays);
# and ends with a tiny real guest from Glance under QEMU on a bridge the agent plugged,
# which gets its address by DHCP and answers ping and HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${DEMO_DIR:-/tmp/compute-agent-demo}
HOST=demo-host

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "install dependencies (idempotent)"
bash scripts/install-deps.sh
step "start RabbitMQ on loopback"
bash scripts/rabbitmq.sh start
step "build"
swift build 2>&1 | tail -2
BIN=$ROOT/.build/debug

rm -rf "$WORK"; mkdir -p "$WORK"
cat > "$WORK/compute-agent.conf" <<CONF
[DEFAULT]
host = $HOST
transport_url = rabbit://guest:guest@127.0.0.1:5672/
state_path = $WORK/state
plugin_dir = $BIN
compute_driver = libvirt
image_fetcher = file
network_plugin = noop
report_interval = 10
periodic_interval = 60

[libvirt]
connection_uri = test:///default

[file]
upload_dir = $WORK/images
CONF
CTL=("$BIN/computectl")
C=(--config-file "$WORK/compute-agent.conf")

AGENT_PID=""; LISTEN_PID=""
cleanup() {
  [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null || true
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

step "listen on scheduler_fanout, as the scheduler does"
"${CTL[@]}" listen-capabilities "${C[@]}" --count 1 --timeout 30 > "$WORK/capabilities.txt" 2>&1 &
LISTEN_PID=$!
for _ in $(seq 1 100); do grep -q "listening" "$WORK/capabilities.txt" 2>/dev/null && break; sleep 0.1; done

step "start compute-agent (libvirt plugin on test:///default)"
"$BIN/compute-agent" --config-file "$WORK/compute-agent.conf" > "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 200); do grep -q "consuming" "$WORK/agent.log" && break; sleep 0.05; done
sed 's/^/  agent| /' "$WORK/agent.log"

step "capabilities the agent fanned out right after start-up"
wait "$LISTEN_PID" || true; LISTEN_PID=""
cat "$WORK/capabilities.txt"

step "ping (rpc.call)"
"${CTL[@]}" ping "${C[@]}"

qemu-img create -q -f qcow2 "$WORK/cirros-like.qcow2" 16M
step "boot an instance (rpc.cast build_and_run_instance)"
UUID=$("${CTL[@]}" boot "${C[@]}" --name demo-vm --vcpus 1 --memory 64 --disk 1 \
        --image "file://$WORK/cirros-like.qcow2" --wait | tee /dev/stderr | head -1 | awk '{print $NF}')

for action in pause unpause suspend resume; do
  step "$action"
  "${CTL[@]}" action "$action" "$UUID" "${C[@]}" --wait
done
step "reboot (soft)"
"${CTL[@]}" reboot "$UUID" "${C[@]}" --wait
step "stop"
"${CTL[@]}" action stop "$UUID" "${C[@]}" --wait
step "a refused action: pause while stopped (the agent logs InstanceInvalidState)"
"${CTL[@]}" action pause "$UUID" "${C[@]}" --wait
sleep 0.2; grep "InstanceInvalidState" "$WORK/agent.log" | tail -1 | sed 's/^/  agent| /'
step "start"
"${CTL[@]}" action start "$UUID" "${C[@]}" --wait
step "rescue, then unrescue"
"${CTL[@]}" action rescue "$UUID" "${C[@]}" --wait
"${CTL[@]}" action unrescue "$UUID" "${C[@]}" --wait
step "snapshot (stored by the file image plugin's upload side)"
"${CTL[@]}" action snapshot "$UUID" "${C[@]}" --image-name demo-snap --wait
ls -l "$WORK/images" | sed 's/^/  /'
step "resize to 2 vcpus / 128 MB, then confirm"
"${CTL[@]}" action resize "$UUID" "${C[@]}" --flavor 2,128,1 --wait
"${CTL[@]}" action confirm-resize "$UUID" "${C[@]}" --wait
step "lock: a stop without admin context is refused (InstanceIsLocked), an admin's goes through"
"${CTL[@]}" action lock "$UUID" "${C[@]}" --wait
"${CTL[@]}" action stop "$UUID" "${C[@]}" --wait
sleep 0.2; grep "InstanceIsLocked" "$WORK/agent.log" | tail -1 | sed 's/^/  agent| /'
"${CTL[@]}" action stop "$UUID" "${C[@]}" --admin --wait
"${CTL[@]}" action unlock "$UUID" "${C[@]}" --wait
"${CTL[@]}" action start "$UUID" "${C[@]}" --wait
step "soft delete, then restore"
"${CTL[@]}" action soft-delete "$UUID" "${C[@]}" --wait
"${CTL[@]}" action restore "$UUID" "${C[@]}" --wait
step "diagnostics and the resource audit"
"${CTL[@]}" diagnostics "$UUID" "${C[@]}"
grep "Total usable" "$WORK/agent.log" | tail -3 | sed 's/^/  agent| /'

step "SIGKILL the agent, then start it again: its journal keeps the record"
kill -KILL "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
"$BIN/compute-agent" --config-file "$WORK/compute-agent.conf" >> "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 200); do [ "$(grep -c consuming "$WORK/agent.log")" -ge 2 ] && break; sleep 0.05; done
echo "  (test:///default keeps its domains inside the agent process, so this domain died with it;"
echo "   the record survived and reconciliation reports that, instead of forgetting the instance)"
grep -E "vanished|recovered instance records" "$WORK/agent.log" | tail -2 | sed 's/^/  agent| /'
"${CTL[@]}" show "$UUID" "${C[@]}" | grep -E '"(vm_state|fault)"' | sed 's/^/  /'
step "rebuild re-creates the domain from the recorded image"
"${CTL[@]}" action rebuild "$UUID" "${C[@]}" --wait
step "list"
"${CTL[@]}" list "${C[@]}"
step "terminate"
"${CTL[@]}" terminate "$UUID" "${C[@]}" --wait
"${CTL[@]}" list "${C[@]}"

step "what the agent logged for this instance"
grep "$UUID" "$WORK/agent.log" | grep -v get_instance_info | sed 's/^/  agent| /'
step "done with the file plugin: stopping the agent (SIGTERM)"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
tail -2 "$WORK/agent.log" | sed 's/^/  agent| /'

step "a real Glance v2 (glance-api 33 under gunicorn, no keystone; installed once)"
bash scripts/glance.sh start
GLANCE=$(bash scripts/glance.sh url)
IMAGE_ID=$(curl -sf -X POST "$GLANCE/v2/images" -H 'Content-Type: application/json' \
  -d '{"name": "demo-image", "disk_format": "qcow2", "container_format": "bare"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf -X PUT "$GLANCE/v2/images/$IMAGE_ID/file" -H 'Content-Type: application/octet-stream' \
  --data-binary "@$WORK/cirros-like.qcow2"
curl -sf "$GLANCE/v2/images/$IMAGE_ID" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  image", r["id"], r["status"], r["disk_format"], r["size"], "bytes", r["os_hash_algo"], r["os_hash_value"][:16] + "…")'

step "the agent again, now with image_fetcher = glance"
# The [file] section (the last one) belongs to the file plugin, which is no longer configured.
sed -i -e '/^\[file\]/,$d' -e "s/^image_fetcher = file/image_fetcher = glance/" "$WORK/compute-agent.conf"
printf '\n[glance]\napi_servers = %s\n' "$GLANCE" >> "$WORK/compute-agent.conf"
"$BIN/compute-agent" --config-file "$WORK/compute-agent.conf" >> "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 200); do [ "$(grep -c consuming "$WORK/agent.log")" -ge 3 ] && break; sleep 0.05; done
step "boot from Glance: downloaded once, verified (sha512), cached in _base as raw, a qcow2 overlay per instance"
G1=$("${CTL[@]}" boot "${C[@]}" --name glance-vm-1 --vcpus 1 --memory 64 --disk 1 --image "$IMAGE_ID" --wait | tee /dev/stderr | head -1 | awk '{print $NF}')
G2=$("${CTL[@]}" boot "${C[@]}" --name glance-vm-2 --vcpus 1 --memory 64 --disk 1 --image "$IMAGE_ID" --wait | tee /dev/stderr | head -1 | awk '{print $NF}')
grep -E "image ready|fetched|already cached" "$WORK/agent.log" | tail -4 | sed 's/^/  agent| /'
ls -l "$WORK/state/instances/_base" | sed 's/^/  _base| /'
qemu-img info -U "$WORK/state/instances/$G2/disk" | grep -E "file format|virtual size|backing file:" | sed 's/^/  disk| /'
"${CTL[@]}" terminate "$G1" "${C[@]}" --wait
"${CTL[@]}" terminate "$G2" "${C[@]}" --wait
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""

step "a tiny real guest: Debian's cloud kernel + a busybox initramfs, built from downloaded packages"
bash scripts/build-guest.sh
GUEST=/var/lib/compute-agent-test/guest
bash scripts/libvirtd.sh start
GUEST_IMAGE=$(curl -sf -X POST "$GLANCE/v2/images" -H 'Content-Type: application/json' \
  -d '{"name": "tinyguest", "disk_format": "qcow2", "container_format": "bare"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf -X PUT "$GLANCE/v2/images/$GUEST_IMAGE/file" -H 'Content-Type: application/octet-stream' --data-binary "@$GUEST/disk.qcow2"
echo "  uploaded to Glance as $GUEST_IMAGE"

step "the agent on real QEMU (qemu:///system, TCG), Glance images, linuxbridge networking with DHCP"
BR=cademo0; NET=10.199.77
ip link del "$BR" 2>/dev/null || true
sed -i "s|^connection_uri = test:///default|connection_uri = qemu:///system\nvirt_type = qemu\nshutdown_timeout = 5|; s/^network_plugin = noop/network_plugin = linuxbridge/" "$WORK/compute-agent.conf"
printf '\n[linuxbridge]\ndhcp = true\nstate_dir = %s\n' "$WORK/linuxbridge" >> "$WORK/compute-agent.conf"
mkdir -p "$WORK/linuxbridge"
"$BIN/compute-agent" --config-file "$WORK/compute-agent.conf" >> "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 400); do [ "$(grep -c consuming "$WORK/agent.log")" -ge 4 ] && break; sleep 0.05; done
PORT=$(python3 -c 'import uuid; print(uuid.uuid4())')
VIF="{\"id\": \"$PORT\", \"address\": \"52:54:00:de:40:01\", \"type\": \"bridge\", \"network\": {\"id\": \"demo-net\", \"bridge\": \"$BR\", \"meta\": {\"mtu\": 1500}, \"subnets\": [{\"cidr\": \"$NET.0/24\", \"gateway\": {\"address\": \"$NET.1\"}, \"ips\": [{\"address\": \"$NET.23\"}]}]}}"
step "boot the guest with one VIF on bridge $BR ($NET.0/24, the agent's dnsmasq answers DHCP)"
T0=$(date +%s.%N)
GUUID=$("${CTL[@]}" boot "${C[@]}" --name tinyguest --vcpus 1 --memory 128 --disk 1 --image "$GUEST_IMAGE" --vif "$VIF" --wait --timeout 120 | tee /dev/stderr | head -1 | awk '{print $NF}')
CONSOLE="$WORK/state/instances/$GUUID/console.log"
for _ in $(seq 1 240); do grep -q TINYGUEST-READY "$CONSOLE" 2>/dev/null && break; sleep 0.25; done
echo "  console| $(grep TINYGUEST-READY "$CONSOLE" || echo 'no marker within 60 s')"
echo "  ($(python3 -c "import time; print(round(time.time() - $T0, 1))") s from the boot command)"
ip -br link show master "$BR" | sed 's/^/  bridge| /'
step "ping and HTTP from the host"
ping -c 3 -W 2 "$NET.23" | sed 's/^/  /'
curl -s "http://$NET.23/" | sed 's/^/  /'; echo
step "terminate: the tap and the DHCP entry go with it"
"${CTL[@]}" terminate "$GUUID" "${C[@]}" --wait
ip -br link show master "$BR" | sed 's/^/  bridge| /'; echo "  (no port left on $BR)"
step "done: stopping the agent (SIGTERM)"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
ip link del "$BR" 2>/dev/null || true
tail -2 "$WORK/agent.log" | sed 's/^/  agent| /'
