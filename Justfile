# cxr-edge recipes. Variables can be set on the command line: `just train-all data=<folder> size=128`.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
bin := venv / "bin"
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
    test -x {{bin}}/python || python3 -m venv {{venv}}
    {{bin}}/pip install -q -c constraints.txt -e '.[dev,openvino]'

# the main job on the built-in synthetic data: train all seven backbones and evaluate them
demo: (train-all) (evaluate)

# train the backbones with identical settings (data=, size=, epochs=, backbones=, out=)
train-all:
    {{bin}}/cxr-edge train-all --data {{data}} --size {{size}} --epochs {{epochs}} --backbones {{backbones}} --out {{out}}

# evaluate every run in out= and their ensemble on the test side of the saved split
evaluate:
    {{bin}}/cxr-edge evaluate {{out}} --split test

# check the saved split of out= for patients on two sides
audit:
    {{bin}}/cxr-edge data audit {{out}}/split.json

# run the test suite (fast, offline)
test *args:
    {{bin}}/python -m pytest -q {{args}}
