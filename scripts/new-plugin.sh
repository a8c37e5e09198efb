#!/usr/bin/env bash
# Creates a new plugin crate plugins/NAME from scripts/templates/plugin/:
#
#   scripts/new-plugin.sh NAME [--kind metric|tracing]     (default: metric)
#
# NAME is the directory, the registered plugin name and the .wasm file name
# (target/plugins/NAME.wasm); the package is kpulse-plugin-NAME with - for _. It must match
# [a-z][a-z0-9_]* and plugins/NAME must not exist. The crate is a workspace member through the
# "plugins/*" glob of the root Cargo.toml, so nothing else needs an edit:
# scripts/build-plugins.sh builds it. A metric plugin implements Collector::update, a tracing
# one Tracing::start and on_timer; docs/plugin-guide.md tells the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 NAME [--kind metric|tracing]" >&2; exit 2; }
die() { echo "new-plugin: error: $*" >&2; exit 1; }

name=""
kind=metric
while [ $# -gt 0 ]; do
    case "$1" in
        --kind) [ $# -ge 2 ] || usage; kind="$2"; shift 2 ;;
        --kind=*) kind="${1#--kind=}"; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) [ -z "$name" ] || usage; name="$1"; shift ;;
    esac
done
[ -n "$name" ] || usage
[[ "$name" =~ ^[a-z][a-z0-9_]*$ ]] || die "bad name '$name': use [a-z][a-z0-9_]* (it is the plugin name and the .wasm file name)"
case "$kind" in
    metric|tracing) ;;
    *) die "bad kind '$kind': metric or tracing" ;;
esac

dir="plugins/$name"
if [ -e "$dir" ] || [ -L "$dir" ]; then die "$dir already exists"; fi

templates=scripts/templates/plugin
package="kpulse-plugin-${name//_/-}"
# The plugin type: NAME in CamelCase (net_rx_latency -> NetRxLatency), plus "Plugin" where that
# would clash with a name the template uses or has in scope (the SDK and std preludes, Self).
type=""
IFS=_ read -ra words <<<"$name"
for word in "${words[@]}"; do type+="${word^}"; done
taken=" Collector Config Context Error Metric Plugin Result TimerId Tracing Duration Self Option
    Some None Ok Err Vec String Box ToString ToOwned Clone Copy Send Sync Sized Unpin Drop Fn
    FnMut FnOnce Default Eq PartialEq Ord PartialOrd Iterator IntoIterator Extend AsRef AsMut
    Into From TryFrom TryInto FromIterator DoubleEndedIterator ExactSizeIterator "
if [[ "$(tr -s ' \n' '  ' <<<"$taken")" == *" $type "* ]]; then type+=Plugin; fi
summary="kpulse $kind plugin $name (TODO: what it does)"

# Every value is [a-z0-9_ -] plus the fixed words of $summary: safe in a sed replacement.
render() {
    sed -e "s/@NAME@/$name/g" -e "s/@PACKAGE@/$package/g" -e "s/@TYPE@/$type/g" \
        -e "s/@SUMMARY@/$summary/g" "$1"
}

# mkdir fails if the directory appeared meanwhile; a failure after it leaves nothing behind.
mkdir "$dir" || die "could not create $dir"
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/src"
render "$templates/Cargo.toml.in" >"$dir/Cargo.toml"
render "$templates/$kind.rs.in" >"$dir/src/lib.rs"
trap - EXIT

echo "created $dir ($kind plugin, package $package):"
find "$dir" -type f | sort | sed 's/^/  /'
echo "build it: scripts/build-plugins.sh  (-> target/plugins/$name.wasm)"
echo "      or: cargo build --profile release-wasm --target wasm32-wasip2 -p $package"
