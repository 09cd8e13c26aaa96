cd /work/main
for i in 1 2 3; do
  for t in longpoll sse; do
    for b in old new; do
      bin=/tmp/herald-old; [ $b = new ] && bin=/work/main/target/release/herald
      ./target/release/herald-bench --no-plots --herald-bin $bin --out /tmp/ab/$t-$b-$i --transport $t fanout > /dev/null 2>&1
      echo "$t $b $i $(grep -E '^\| fanout' /tmp/ab/$t-$b-$i/report.md | head -1)"
    done
  done
done
