#!/usr/bin/env bash
# Builds the Debian packages from this tree with dpkg-deb:
#   compute-agent_<version>_<arch>.deb      the daemon, computectl, the shipped plugins,
#                                           the Swift runtime they share, config, unit
#   compute-agent-dev_<version>_<arch>.deb  plugin header, pkg-config file, guide, example
#
#   bash packaging/build-deb.sh [OUTDIR]     (default: .build/deb)
#
# The Swift runtime libraries the binaries and plugins need are copied once into
# /usr/lib/compute-agent/swift and every ELF file's RUNPATH points there (patchelf), so
# the package runs on a host without a Swift toolchain and the agent and its Swift plugins
# load one runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/.build/deb}
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH)

swift build -c release 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)
VERSION=$("$BIN/compute-agent" --version | awk '{print $2}')
ABI=$(awk '/#define CA_PLUGIN_ABI_MAJOR/ {ma=$3} /#define CA_PLUGIN_ABI_MINOR/ {mi=$3} END {print ma"."mi}' \
      Sources/PluginABI/include/compute_agent_plugin.h)

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
A=$STAGE/compute-agent
D=$STAGE/compute-agent-dev
install -d "$A/DEBIAN" "$A/usr/bin" "$A/usr/lib/compute-agent/plugins" "$A/usr/lib/compute-agent/swift" \
           "$A/etc/compute-agent" "$A/lib/systemd/system" "$A/usr/share/doc/compute-agent"
install -m 0755 "$BIN/compute-agent" "$BIN/computectl" "$A/usr/bin/"
for p in "$BIN"/libcompute_*.so; do install -m 0644 "$p" "$A/usr/lib/compute-agent/plugins/"; done
install -m 0640 packaging/compute-agent.conf "$A/etc/compute-agent/compute-agent.conf"
install -m 0644 packaging/compute-agent.service "$A/lib/systemd/system/compute-agent.service"
install -m 0644 docs/operations.md docs/architecture.md docs/rpc-api.md "$A/usr/share/doc/compute-agent/"

# The Swift runtime: every library of the toolchain that any of our ELF files needs.
SWIFT_LIB_DIR=$(dirname "$(ldd "$BIN/compute-agent" | awk '/libswiftCore.so/ {print $3}')")
for f in "$A/usr/bin/"* "$A/usr/lib/compute-agent/plugins/"*.so; do
  ldd "$f" | awk -v d="$SWIFT_LIB_DIR" 'index($3, d) == 1 {print $3}'
done | sort -u | while read -r lib; do install -m 0644 "$lib" "$A/usr/lib/compute-agent/swift/"; done
for f in "$A/usr/bin/"*; do patchelf --set-rpath '$ORIGIN/../lib/compute-agent/swift' "$f"; done
for f in "$A/usr/lib/compute-agent/plugins/"*.so; do patchelf --set-rpath '$ORIGIN/../swift' "$f"; done
for f in "$A/usr/lib/compute-agent/swift/"*.so; do patchelf --set-rpath '$ORIGIN' "$f"; done

echo /etc/compute-agent/compute-agent.conf > "$A/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$A/DEBIAN/"
SIZE=$(du -sk "$A" | cut -f1)
cat > "$A/DEBIAN/control" <<CONTROL
Package: compute-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: ComputeAgent developers <compute-agent@localhost>
Installed-Size: $SIZE
Depends: libc6, libstdc++6, libgcc-s1, librabbitmq4, libsqlite3-0, libvirt0, libcurl4, libssl3, qemu-utils, adduser
Recommends: libvirt-daemon-system
Section: admin
Priority: optional
Description: per-host compute agent of a Nova-style cloud
 Consumes compute RPC messages from RabbitMQ in oslo.messaging's wire format, keeps a
 crash-safe journal of its instances, and does host work through hypervisor, image and
 network plugins loaded through a C ABI. Ships the libvirt, file and noop plugins and the
 Swift runtime they share.
CONTROL

install -d "$D/DEBIAN" "$D/usr/include/compute-agent" "$D/usr/lib/$MULTIARCH/pkgconfig" \
           "$D/usr/share/doc/compute-agent-dev/examples"
install -m 0644 Sources/PluginABI/include/compute_agent_plugin.h "$D/usr/include/compute-agent/"
sed "s/@ABI_VERSION@/$ABI/" packaging/compute-agent-plugin.pc.in > "$D/usr/lib/$MULTIARCH/pkgconfig/compute-agent-plugin.pc"
install -m 0644 docs/plugin-guide.md "$D/usr/share/doc/compute-agent-dev/"
install -m 0644 Plugins/NoopNetwork/noop.c "$D/usr/share/doc/compute-agent-dev/examples/"
cat > "$D/DEBIAN/control" <<CONTROL
Package: compute-agent-dev
Version: $VERSION
Architecture: $ARCH
Maintainer: ComputeAgent developers <compute-agent@localhost>
Depends: pkgconf | pkg-config
Suggests: compute-agent (= $VERSION)
Section: devel
Priority: optional
Description: plugin kit for ComputeAgent
 The C header of the plugin ABI $ABI, a pkg-config file (compute-agent-plugin), the plugin
 guide and the noop network plugin as a worked example.
CONTROL

mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$A" "$OUT/compute-agent_${VERSION}_${ARCH}.deb" >/dev/null
dpkg-deb --root-owner-group --build "$D" "$OUT/compute-agent-dev_${VERSION}_${ARCH}.deb" >/dev/null
echo "$OUT/compute-agent_${VERSION}_${ARCH}.deb"
echo "$OUT/compute-agent-dev_${VERSION}_${ARCH}.deb"
