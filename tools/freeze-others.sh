#!/usr/bin/env bash
# Development aid for timing on a shared machine: while process group $1 runs, keep every other heavy
# process (python, compilers, pip, niced jobs) stopped with SIGSTOP; continue them all when it ends.
# Usage: setsid bash -c "echo \$\$ > /tmp/pg; exec /usr/bin/time just demo" & sleep 0.5; setsid tools/freeze-others.sh $(cat /tmp/pg) &
keep=$1
: > /tmp/frozen.all
while pgrep -g "$keep" >/dev/null; do
  ps -eo pid=,pgid=,ni=,comm= | while read -r pid pg ni comm; do
    [ "$pg" = "$keep" ] && continue
    [ "$pid" = "$$" ] && continue
    case "$comm" in python*|pytest|cc1plus|cc1|c++|g++|gcc|ld|ninja|cmake|make|pip*|just|cxr-edge|node) hit=1 ;; *) hit=0 ;; esac
    [ "$ni" -gt 0 ] 2>/dev/null && hit=1
    [ "$hit" = 1 ] || continue
    grep -qx "$pid" /tmp/frozen.all || { kill -STOP "$pid" 2>/dev/null && echo "$pid" >> /tmp/frozen.all; }
  done
  sleep 2
done
for pid in $(cat /tmp/frozen.all); do kill -CONT "$pid" 2>/dev/null; done
echo "released $(date)" >> /tmp/freeze-loop.log
