#!/usr/bin/env python3
"""p50 and p99 latency from pgbench per-transaction logs (pgbench -l).

    latency.py LOGFILE...   ->   "<p50_us> <p99_us> <transactions>"

Each line of a pgbench -l log is "client_id transaction_no time script_no time_epoch time_us";
the 3rd column is the transaction's latency in microseconds (with -C it includes the connect).
Lines whose 3rd column is not a number (failed or skipped transactions) are left out.
Prints "- - 0" when there is nothing to measure.
"""
import sys


def percentile(sorted_values, q):
    # Nearest-rank percentile.
    n = len(sorted_values)
    k = max(0, min(n - 1, int(-(-q * n // 1)) - 1))
    return sorted_values[k]


def main():
    values = []
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(int(parts[2]))
    if not values:
        print("- - 0")
        return
    values.sort()
    print(percentile(values, 0.50), percentile(values, 0.99), len(values))


if __name__ == "__main__":
    main()
