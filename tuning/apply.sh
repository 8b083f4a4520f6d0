#!/usr/bin/env bash
# Apply a ringcast sysctl profile to the running kernel.
# Usage: tuning/apply.sh throughput|low-latency [--apply]
# Without --apply (default) only prints the `sysctl -w` commands it would run.
# With --apply runs them (root needed); nothing is persisted across reboots.
# Exit status: 0 ok, 1 bad usage / not root, 2 some sysctl -w failed.
set -u

usage() { echo "usage: $0 throughput|low-latency [--apply]" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case $1 in throughput|low-latency) ;; *) usage ;; esac
apply=0
if [ $# -eq 2 ]; then [ "$2" = --apply ] && apply=1 || usage; fi

dir=$(cd "$(dirname "$0")" && pwd)
conf=$dir/sysctl/$1.conf
[ -r "$conf" ] || { echo "cannot read $conf" >&2; exit 1; }
if [ $apply = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "--apply needs root (try: sudo $0 $1 --apply)" >&2; exit 1; }
    command -v sysctl >/dev/null || { echo "sysctl not found (package procps)" >&2; exit 1; }
fi

norm() { printf '%s\n' "$*" | tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }

# True when every field of $1 >= the same field of $2 (both numeric).
at_least() {
    local -a cur=($1) want=($2); local i
    [ ${#cur[@]} -eq ${#want[@]} ] || return 1
    for i in "${!want[@]}"; do
        [[ ${cur[i]} =~ ^[0-9]+$ && ${want[i]} =~ ^[0-9]+$ ]] || return 1
        [ ${#cur[i]} -gt ${#want[i]} ] && continue
        [ ${#cur[i]} -lt ${#want[i]} ] && return 1
        [[ ${cur[i]} < ${want[i]} ]] && return 1
    done
    return 0
}

[ $apply = 1 ] || echo "# dry run: commands that would be run (add --apply to run them as root)"
failed=0 changed=0
keep_out=()
floor=0
while IFS= read -r line || [ -n "$line" ]; do
    line=$(norm "$line")
    case $line in
        '#@ min') floor=1; continue ;;
        ''|'#'*|';'*) continue ;;
    esac
    key=$(norm "${line%%=*}"); want=$(norm "${line#*=}")
    is_floor=$floor; floor=0
    path=/proc/sys/${key//.//}
    if [ ! -e "$path" ]; then
        echo "# skip $key: not present on this kernel ($(uname -r))"
        keep_out+=("$key")
        continue
    fi
    cur=$(norm "$(cat "$path" 2>/dev/null)")
    if [ "$cur" = "$want" ]; then
        echo "# $key already $want"
        continue
    fi
    if [ $is_floor = 1 ] && at_least "$cur" "$want"; then
        echo "# keep $key = $cur (already >= $want; never lowered)"
        keep_out+=("$key")
        continue
    fi
    echo "sysctl -w $key=\"$want\"    # now: $cur"
    if [ $apply = 1 ]; then
        if sysctl -q -w "$key=$want"; then changed=$((changed + 1))
        else echo "# FAILED: $key" >&2; failed=$((failed + 1)); fi
    fi
done < "$conf"

if [ $apply = 1 ]; then
    echo
    echo "applied $changed setting(s), $failed failed. These last until reboot. To persist:"
    echo "  cp $conf /etc/sysctl.d/60-ringcast-$1.conf && sysctl --system"
    if [ ${#keep_out[@]} -gt 0 ]; then
        echo "  and delete these keys from the copy (absent here, or already higher):"
        printf '    %s\n' "${keep_out[@]}"
    fi
fi
[ $failed -eq 0 ] || exit 2
exit 0
