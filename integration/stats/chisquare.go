// Package stats holds the statistics l4nft's tests and benchmarks use to
// judge a traffic split: Pearson's chi-square goodness-of-fit test.
package stats

import (
	"fmt"
	"math"
)

// ChiSquare tests observed counts against expected shares (any positive
// numbers; they are normalised). It returns the statistic and the p-value:
// the probability of a split at least this uneven if connections really
// were spread by the shares. A test fails the split when p < alpha (the
// issue's alpha is 0.001).
func ChiSquare(observed []int, shares []float64) (stat, p float64, err error) {
	if len(observed) != len(shares) || len(observed) < 2 {
		return 0, 0, fmt.Errorf("chi-square needs at least 2 categories with a share each (got %d counts, %d shares)", len(observed), len(shares))
	}
	total, sum := 0, 0.0
	for i := range observed {
		total += observed[i]
		if shares[i] <= 0 {
			return 0, 0, fmt.Errorf("share %d is %v, want > 0", i, shares[i])
		}
		sum += shares[i]
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("no observations")
	}
	for i, o := range observed {
		e := float64(total) * shares[i] / sum
		stat += (float64(o) - e) * (float64(o) - e) / e
	}
	return stat, UpperGamma(float64(len(observed)-1)/2, stat/2), nil
}

// UpperGamma is the regularized upper incomplete gamma function Q(a, x),
// by series for x < a+1 and by continued fraction otherwise (Numerical
// Recipes §6.2). The chi-square p-value for k degrees of freedom is
// Q(k/2, stat/2).
func UpperGamma(a, x float64) float64 {
	if x <= 0 {
		return 1
	}
	lg, _ := math.Lgamma(a)
	if x < a+1 {
		// P(a, x) by its series; Q = 1 - P.
		sum, term := 1/a, 1/a
		for n := 1; n < 1000; n++ {
			term *= x / (a + float64(n))
			sum += term
			if math.Abs(term) < math.Abs(sum)*1e-15 {
				break
			}
		}
		return 1 - sum*math.Exp(-x+a*math.Log(x)-lg)
	}
	// Q(a, x) by Lentz's continued fraction.
	const tiny = 1e-300
	b := x + 1 - a
	c := 1 / tiny
	d := 1 / b
	h := d
	for i := 1; i < 1000; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		d = an*d + b
		if math.Abs(d) < tiny {
			d = tiny
		}
		c = b + an/c
		if math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		delta := d * c
		h *= delta
		if math.Abs(delta-1) < 1e-15 {
			break
		}
	}
	return math.Exp(-x+a*math.Log(x)-lg) * h
}
