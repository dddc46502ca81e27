#!/usr/bin/env bash
# Builds the tiny test guest offline-ish from Debian packages (downloaded, never installed):
# the cloud kernel and busybox-static into an initramfs whose /init loads the virtio
# drivers, brings eth0 up by DHCP (or a static guest_ip= from the kernel command line),
# serves HTTP on port 80, powers off on the ACPI button, and prints
#   TINYGUEST-READY mac=<mac> ip=<ip/len> uptime=<s>
# on the serial console; plus a bootable disk (MBR + FAT16 + syslinux) as qcow2.
#
#   scripts/build-guest.sh [OUT_DIR]     (default /var/lib/compute-agent-test/guest)
# Outputs: vmlinuz, initrd.img, disk.qcow2. Idempotent: a complete OUT_DIR is kept.
set -euo pipefail
OUT=${1:-/var/lib/compute-agent-test/guest}
if [ -s "$OUT/disk.qcow2" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
  echo "build-guest: $OUT is complete"
  exit 0
fi
for tool in cpio mcopy syslinux mkfs.fat sfdisk qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-guest: $tool missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "build-guest: cannot find the cloud kernel package" >&2; exit 1; }
echo "build-guest: downloading $KPKG and busybox-static"
chmod 777 "$WORK"  # apt-get download runs as _apt
apt-get download -q "$KPKG" busybox-static >/dev/null 2>&1 || apt-get download "$KPKG" busybox-static
dpkg-deb -x "$(ls "$KPKG"_*.deb)" kernel
dpkg-deb -x busybox-static_*.deb busybox
KVER=$(ls kernel/lib/modules)

mkdir -p root/{bin,sbin,etc,proc,sys,dev,tmp,www,lib/modules}
cp busybox/bin/busybox root/bin/busybox
# Debian builds virtio as modules, and there is no modules.dep: the order here is the
# dependency order.
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk button evdev"
for m in $MODS; do
  f=$(find "kernel/lib/modules/$KVER" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { echo "build-guest: module $m not found in $KPKG" >&2; exit 1; }
  case "$f" in
    *.ko.xz) xz -dc "$f" > "root/lib/modules/$m.ko" ;;
    *) cp "$f" "root/lib/modules/$m.ko" ;;
  esac
done
echo "$MODS" > root/lib/modules/order
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
IP=none; MAC=none
if ip link show eth0 >/dev/null 2>&1; then
  MAC=$(cat /sys/class/net/eth0/address)
  ip link set eth0 up
  STATIC=$(sed -n 's/.*guest_ip=\([^ ]*\).*/\1/p' /proc/cmdline)
  if [ -n "$STATIC" ]; then
    ip addr add "${STATIC%%,*}" dev eth0
    case "$STATIC" in *,*) ip route add default via "${STATIC#*,}" ;; esac
  else
    udhcpc -i eth0 -n -q -t 8 -T 1 -s /bin/udhcpc-script >/dev/null 2>&1
  fi
  IP=$(ip -4 -o addr show eth0 | awk '{print $4}' | head -1)
fi
echo "<h1>tinyguest $MAC ${IP:-none}</h1>" > /www/index.html
httpd -p 80 -h /www
acpid -c /etc/acpi 2>/dev/null
echo "TINYGUEST-READY mac=$MAC ip=${IP:-none} uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
exec sh -c 'while true; do sleep 3600; done'
INIT
cat > root/bin/udhcpc-script <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
DHCP
mkdir -p root/etc/acpi/PWRF
printf '#!/bin/sh\npoweroff -f\n' > root/etc/acpi/PWRF/00000080
chmod 755 root/init root/bin/udhcpc-script root/etc/acpi/PWRF/00000080
(cd root && find . | cpio -o -H newc --quiet | gzip -9) > initrd.img
cp "kernel/boot/vmlinuz-$KVER" vmlinuz

# The disk: MBR boot code + one bootable FAT16 partition at 1 MiB with syslinux, the
# kernel, the initramfs and syslinux.cfg. mtools and syslinux work on the partition file;
# nothing is mounted.
SIZE_MB=24
truncate -s "${SIZE_MB}M" disk.raw
echo 'start=2048, type=6, bootable' | sfdisk -q disk.raw
truncate -s "$(( (SIZE_MB - 1) * 1024 ))K" part.img
mkfs.fat -F 16 -n TINYGUEST part.img >/dev/null
syslinux --install part.img
cat > syslinux.cfg <<'CFG'
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=ttyS0 quiet panic=-1
CFG
mcopy -i part.img vmlinuz initrd.img syslinux.cfg ::/
dd if=part.img of=disk.raw bs=1M seek=1 conv=notrunc status=none
MBR=$(ls /usr/lib/syslinux/mbr/mbr.bin 2>/dev/null || ls /usr/lib/SYSLINUX/mbr.bin)
dd if="$MBR" of=disk.raw bs=440 count=1 conv=notrunc status=none
mkdir -p "$OUT"
qemu-img convert -q -f raw -O qcow2 disk.raw "$OUT/disk.qcow2.part"
cp vmlinuz "$OUT/vmlinuz"
cp initrd.img "$OUT/initrd.img"
mv "$OUT/disk.qcow2.part" "$OUT/disk.qcow2"
echo "build-guest: $OUT (kernel $KVER: vmlinuz $(stat -c %s "$OUT/vmlinuz") B, initrd $(stat -c %s "$OUT/initrd.img") B, disk.qcow2 $(stat -c %s "$OUT/disk.qcow2") B)"
