"""Stage 2, parse: the kernel's OOM report, line by line, to one KernelKill per kill
(oom_report.py: every report shape from 3.x to 6.x, interleaved reports, group kills)."""
