# Shared by the contrib scripts (sourced, not run).

# Run the calling script as root: as it is when root already, else again
# through sudo (so `contrib/demo` works the same for root, where sudo is
# often not installed, and for a user with sudo rights).
as_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    if ! command -v sudo >/dev/null; then
        echo "${0##*/}: needs root (and sudo is not installed): run it as root" >&2
        exit 1
    fi
    exec sudo --preserve-env=CI -- "$(realpath "$0")" "$@"
}

# Run "$@", showing its output only if it fails.
quietly() {
    local log rc=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "${0##*/}: '$*' failed ($rc):" >&2
        cat "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}
