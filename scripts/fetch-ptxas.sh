#!/usr/bin/env bash
# Fetches ptxas from Debian's non-free `nvidia-cuda-toolkit` .deb without installing the toolkit
# (docs/gpu.md): a private apt configuration that adds `non-free` to the local
# Debian sources, `apt-get download` of that one package, `dpkg -x`, keep only /usr/bin/ptxas.
# The binary is cached under ${RESCA_CACHE:-~/.cache/resca}/ptxas-<version>/ptxas and reused.
# Prints the path of ptxas on stdout; exits 2 (with the reason on stderr) where it cannot be had.
set -euo pipefail
cache="${RESCA_CACHE:-$HOME/.cache/resca}"

# A cached copy (any version; the newest first).
for found in $(ls -d "$cache"/ptxas-*/ptxas 2>/dev/null | sort -r); do
    if [ -x "$found" ] && "$found" --version >/dev/null 2>&1; then
        echo "$found"
        exit 0
    fi
done
# One on the PATH (a real CUDA install).
if command -v ptxas >/dev/null 2>&1; then
    command -v ptxas
    exit 0
fi

fail() {
    echo "fetch-ptxas: $*" >&2
    exit 2
}
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine"
command -v dpkg >/dev/null 2>&1 || fail "no dpkg on this machine"
sources=/etc/apt/sources.list.d/debian.sources
[ -r "$sources" ] || fail "no $sources (not a Debian machine with deb822 sources)"

work="$cache/apt"
mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
# The machine's sources with non-free added to every stanza.
sed -E 's/^Components:.*/Components: main contrib non-free/' "$sources" >"$work/sources/debian.sources"
apt_opts=(
    -o Dir::Etc::SourceList=/dev/null
    -o "Dir::Etc::SourceParts=$work/sources"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o Debug::NoLocking=1
    -o APT::Sandbox::User=root
)
echo "fetch-ptxas: apt-get update (private configuration with non-free)" >&2
apt-get "${apt_opts[@]}" -qq update >&2 || fail "apt-get update failed (no network to the Debian mirror?)"
(cd "$work/deb" && rm -f nvidia-cuda-toolkit_*.deb &&
    apt-get "${apt_opts[@]}" -qq download nvidia-cuda-toolkit >&2) ||
    fail "apt-get download nvidia-cuda-toolkit failed"
deb=$(ls "$work/deb"/nvidia-cuda-toolkit_*.deb | head -n1)
version=$(dpkg-deb -f "$deb" Version)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dpkg -x "$deb" "$scratch"
[ -x "$scratch/usr/bin/ptxas" ] || fail "$deb holds no usr/bin/ptxas"
dest="$cache/ptxas-$version"
mkdir -p "$dest"
cp "$scratch/usr/bin/ptxas" "$dest/ptxas"
# Only ptxas is kept: drop the .deb and the package lists.
rm -rf "$work"
echo "fetch-ptxas: cached ptxas of nvidia-cuda-toolkit $version in $dest" >&2
echo "$dest/ptxas"
