# gnuplot -e "csv='bench.csv'; out='bench.png'; title='...'" plot.gp
# Two panels against N: median time (s) and peak memory (MiB: libmel's peak
# workspace for libmel modes, process peak RSS for every row).
set datafile separator ','
set terminal pngcairo size 1200,480 font ',10' noenhanced
set output out
set multiplot layout 1,2 title title
set key top left
set grid
set xlabel 'N (rows)'
set ylabel 'median time per training step (s)'
modes = 'naive recompute fused torch_eager'
# columns: 1 rows, 6 mode, 10 time_median_s, 16 peak_workspace_bytes, 18 max_rss_bytes
plot for [m in modes] csv using (strcol(6) eq m ? $1 : 1/0):10 with linespoints title m
set ylabel 'MiB'
plot for [m in 'naive recompute fused'] csv using (strcol(6) eq m ? $1 : 1/0):($16/1048576) with linespoints title m.' workspace', \
     for [m in modes] csv using (strcol(6) eq m ? $1 : 1/0):($18/1048576) with linespoints dt 2 title m.' peak RSS'
unset multiplot
