# cxr-edge recipes. Variables: `just train-all data=<folder> size=128 epochs=1 backbones=resnet18`
# (NAME=VALUE after the recipe name, or before it as just's own overrides).
set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments := true

bin := justfile_directory() / ".venv" / "bin"
data := "synthetic"
size := "64"
epochs := "4"
backbones := "all"
out := "runs"

# list the recipes
default:
    @just --list

# create .venv and install cxr-edge with its pinned dependencies (torch is never replaced)
setup:
    test -x {{bin}}/python || python3 -m venv {{parent_directory(bin)}}
    {{bin}}/pip install -q -c constraints.txt -e '.[dev,openvino]'

# add the mobile extra (ExecuTorch, LiteRT, Core ML converters; about 1.2 GB; torch is never replaced)
setup-mobile: setup
    {{bin}}/pip install -q -c constraints.txt -e '.[dev,openvino,mobile]'

# the main job on the built-in synthetic data: train all seven backbones, export and evaluate them
# (artifacts that fail their parity check are reported as failed rows, not a stop)
demo: train-all (export "keep_going=1") evaluate

# train backbones with identical settings (data= size= epochs= backbones= out=)
train-all *args:
    #!/usr/bin/env bash
    set -euo pipefail
    data={{quote(data)}} size={{size}} epochs={{epochs}} backbones={{backbones}} out={{quote(out)}}
    source tools/recipe-args.sh "data size epochs backbones out" "$@"
    {{bin}}/cxr-edge train-all --data "$data" --size "$size" --epochs "$epochs" --backbones "$backbones" --out "$out"

# evaluate every run in out= and their ensemble on the test side of the saved split
evaluate *args:
    #!/usr/bin/env bash
    set -euo pipefail
    out={{quote(out)}}
    source tools/recipe-args.sh "out" "$@"
    {{bin}}/cxr-edge evaluate "$out" --split test

# export every run in out= to artifacts/, each artifact checked against PyTorch (formats= precisions= out=)
export *args:
    #!/usr/bin/env bash
    set -euo pipefail
    out={{quote(out)}} formats=onnx,openvino precisions=all keep_going=0
    source tools/recipe-args.sh "out formats precisions keep_going" "$@"
    flags=(); [ "$keep_going" = 1 ] && flags+=(--keep-going)
    {{bin}}/cxr-edge export "$out" --out artifacts --formats "$formats" --precisions "$precisions" "${flags[@]}"

# check the saved split of out= for patients on two sides
audit *args:
    #!/usr/bin/env bash
    set -euo pipefail
    out={{quote(out)}}
    source tools/recipe-args.sh "out" "$@"
    {{bin}}/cxr-edge data audit "$out/split.json"

# run the test suite (fast, offline); extra arguments go to pytest
test *args:
    {{bin}}/python -m pytest -q "$@"
