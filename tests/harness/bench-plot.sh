#!/usr/bin/env bash
# Draw a bench run's table (bench.sh's .tsv) as an SVG a browser opens: one bar per figure, how
# many times slower lg.ko is than native (a throughput's ratio turned over, so that longer is
# always worse), on a logarithmic scale from 1x to 1000x, with the spread of the runs as a
# whisker and, with a BEFORE table, that run's bar in grey behind.
# Usage: bench-plot.sh TSV [BEFORE_TSV] >OUT.svg
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: bench-plot.sh TSV [BEFORE_TSV]" >&2; exit 2; }
awk -F'\t' -v before_file="${2:-}" '
    # A figure where more is better (MB/s, round trips per second, ticks served): its slowdown
    # is native over lg.ko.
    function better_when_more(section, name) {
        return section == "virtio" || section == "tick" || name ~ /(mbps|per-s)$/
    }
    function slowdown(section, name, ratio) {
        if (ratio <= 0) return 0
        return better_when_more(section, name) ? 1 / ratio : ratio
    }
    function x(factor) {
        if (factor < 1) factor = 1
        if (factor > 1000) factor = 1000
        return left + width * log(factor) / log(1000)
    }
    BEGIN {
        left = 260; width = 560; row = 22; top = 50
        if (before_file != "") {
            while ((getline line < before_file) > 0) {
                split(line, f, "\t")
                was[f[1] "/" f[2]] = slowdown(f[1], f[2], f[5])
            }
        }
    }
    {
        n++
        key[n] = $1 "/" $2; label[n] = $1 ": " $2
        median[n] = slowdown($1, $2, $5)
        lo[n] = slowdown($1, $2, better_when_more($1, $2) ? $7 : $6)
        hi[n] = slowdown($1, $2, better_when_more($1, $2) ? $6 : $7)
    }
    END {
        height = top + n * row + 40
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" ", \
            left + width + 80, height
        printf "font-family=\"sans-serif\" font-size=\"12\">\n"
        printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
        printf "<text x=\"10\" y=\"20\" font-size=\"15\">lguest-rs: how many times slower under lg.ko than native (median of the runs, whisker: their spread%s)</text>\n", \
            before_file != "" ? "; grey: before" : ""
        for (t = 1; t <= 1000; t *= 10) {
            printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ccc\"/>\n", \
                x(t), top - 10, x(t), height - 30
            printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%dx</text>\n", \
                x(t), height - 15, t
        }
        for (i = 1; i <= n; i++) {
            y = top + (i - 1) * row
            printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", \
                left - 8, y + 13, label[i]
            if (key[i] in was)
                printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"16\" fill=\"#bbb\"/>\n", \
                    left, y + 1, x(was[key[i]]) - left
            printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"10\" fill=\"#3a6ea5\"/>\n", \
                left, y + 4, x(median[i]) - left
            printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"black\"/>\n", \
                x(lo[i]), y + 9, x(hi[i]), y + 9
            printf "<text x=\"%.1f\" y=\"%d\">%.2fx</text>\n", x(hi[i]) + 6, y + 13, median[i]
        }
        print "</svg>"
    }' "$1"
