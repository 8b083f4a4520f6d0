#!/usr/bin/env bash
# Compare this machine's settings with a ringcast tuning profile. Read-only:
# never changes anything. Usage: tuning/check.sh throughput|low-latency
# Exit status: 0 (even when values differ), 1 on bad usage.
set -u

usage() { echo "usage: $0 throughput|low-latency" >&2; exit 1; }
[ $# -eq 1 ] || usage
case $1 in throughput|low-latency) ;; *) usage ;; esac

dir=$(cd "$(dirname "$0")" && pwd)
conf=$dir/sysctl/$1.conf
limits=$dir/limits.conf
[ -r "$conf" ] || { echo "cannot read $conf" >&2; exit 1; }

norm() { printf '%s\n' "$*" | tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }

# True when every field of $1 >= the same field of $2 (both numeric).
at_least() {
    local -a cur=($1) want=($2); local i
    [ ${#cur[@]} -eq ${#want[@]} ] || return 1
    for i in "${!want[@]}"; do
        [[ ${cur[i]} =~ ^[0-9]+$ && ${want[i]} =~ ^[0-9]+$ ]] || return 1
        # Compare as strings of digits so values near 2^64 cannot overflow.
        [ ${#cur[i]} -gt ${#want[i]} ] && continue
        [ ${#cur[i]} -lt ${#want[i]} ] && return 1
        [[ ${cur[i]} < ${want[i]} ]] && return 1
    done
    return 0
}

fmt='%-36s %-24s %-28s %s\n'
printf "$fmt" SETTING CURRENT RECOMMENDED STATUS
diffs=0
floor=0
while IFS= read -r line || [ -n "$line" ]; do
    line=$(norm "$line")
    case $line in
        '#@ min') floor=1; continue ;;
        ''|'#'*|';'*) continue ;;
    esac
    key=$(norm "${line%%=*}"); want=$(norm "${line#*=}")
    path=/proc/sys/${key//.//}
    if [ -r "$path" ]; then
        cur=$(norm "$(cat "$path")")
        if [ "$cur" = "$want" ]; then status=OK
        elif [ $floor = 1 ] && at_least "$cur" "$want"; then status="OK (>= min)"
        else status=DIFF; diffs=$((diffs + 1)); fi
    else
        cur=n/a; status="n/a (not on this kernel)"
    fi
    [ $floor = 1 ] && want=">= $want"
    printf "$fmt" "$key" "$cur" "$want" "$status"
    floor=0
done < "$conf"

# Resource limits of this shell against the soft values in limits.conf.
soft_limit() { awk -v item="$1" '$1 !~ /^#/ && $2 == "soft" && $3 == item { print $4 }' "$limits"; }
check_ulimit() { # name, current, wanted
    local status=DIFF
    if [ "$3" = unlimited ]; then [ "$2" = unlimited ] && status=OK
    elif [ "$2" = unlimited ] || { [ -n "$2" ] && [ "$2" -ge "$3" ]; }; then status=OK; fi
    [ $status = DIFF ] && diffs=$((diffs + 1))
    printf "$fmt" "$1" "$2" "$3" "$status"
}
if [ -r "$limits" ]; then
    check_ulimit "ulimit -n (nofile, this shell)" "$(ulimit -n)" "$(soft_limit nofile)"
    check_ulimit "ulimit -l (memlock KiB, this shell)" "$(ulimit -l)" "$(soft_limit memlock)"
fi

# io_uring can be switched off system-wide (Linux 6.6+): 1 = restricted to
# kernel.io_uring_group / CAP_SYS_ADMIN, 2 = disabled. ringcast needs it.
if [ -r /proc/sys/kernel/io_uring_disabled ]; then
    v=$(cat /proc/sys/kernel/io_uring_disabled)
    s=OK; [ "$v" = 0 ] || { s="DIFF (io_uring restricted)"; diffs=$((diffs + 1)); }
    printf "$fmt" kernel.io_uring_disabled "$v" 0 "$s"
fi

# A running ringcast has its own limits (systemd LimitNOFILE=/LimitMEMLOCK=).
for pid in $(pgrep -x ringcast 2>/dev/null); do
    echo
    echo "running ringcast pid $pid:"
    grep -E '^Max (open files|locked memory)' "/proc/$pid/limits" 2>/dev/null
done

echo
if [ $diffs -eq 0 ]; then echo "profile $1: all settings match"
else echo "profile $1: $diffs setting(s) differ; tuning/apply.sh $1 shows the commands"; fi
exit 0
