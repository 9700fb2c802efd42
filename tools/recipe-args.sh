# Sourced by Justfile recipes so that `just train-all data=DIR size=128` works as the docs say
# (just itself takes NAME=VALUE overrides only before the recipe name).
# Usage: source tools/recipe-args.sh "allowed names" "$@"
_allowed=" $1 "; shift
for _arg in "$@"; do
    _name=${_arg%%=*}
    if [[ "$_arg" != *=* || "$_allowed" != *" $_name "* ]]; then
        echo "error: unknown recipe argument '$_arg'; use NAME=VALUE with NAME one of:$_allowed" >&2
        exit 2
    fi
    printf -v "$_name" '%s' "${_arg#*=}"
done
unset _allowed _arg _name
