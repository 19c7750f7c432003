set -e
B=results/strategies/baselines.json
O=results/strategies-variants
M=mtl-fast
$M train --strategy mgda mgda-ub --normalization l2 --seed 0 1 2 --baselines $B --no-progress --no-plots --out $O/mgda-l2
$M train --strategy mgda mgda-ub --normalization loss+ --seed 0 1 2 --baselines $B --no-progress --no-plots --out $O/mgda-loss+
$M train --strategy mgda --normalization l2 --apply-to normalized --seed 0 1 2 --baselines $B --no-progress --no-plots --out $O/mgda-l2-normalized
$M train --strategy stgu --stgu-crediting reference --seed 0 1 2 --baselines $B --no-progress --no-plots --out $O/stgu-reference
$M train --strategy pertask-grouped --redraw --seed 0 1 2 --baselines $B --no-progress --no-plots --out $O/pertask-grouped-redraw
