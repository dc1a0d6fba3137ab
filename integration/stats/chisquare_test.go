package stats

import (
	"math"
	"testing"
)

func TestUpperGammaMatchesKnownChiSquareValues(t *testing.T) {
	// Critical values of the chi-square distribution (df, x, p).
	tests := []struct{ df, x, p float64 }{
		{1, 3.841, 0.05},
		{1, 10.828, 0.001},
		{3, 16.266, 0.001},
		{3, 7.815, 0.05},
		{10, 29.588, 0.001},
	}
	for _, tt := range tests {
		if got := UpperGamma(tt.df/2, tt.x/2); math.Abs(got-tt.p) > tt.p*0.01 {
			t.Errorf("p(df=%v, x=%v) = %v, want %v", tt.df, tt.x, got, tt.p)
		}
	}
}

func TestChiSquare(t *testing.T) {
	_, p, err := ChiSquare([]int{1000, 2000}, []float64{1, 2})
	if err != nil || p < 0.99 {
		t.Errorf("perfect split: p = %v, err %v; want ~1", p, err)
	}
	_, p, _ = ChiSquare([]int{1500, 1500}, []float64{1, 2})
	if p > 1e-10 {
		t.Errorf("1:1 judged against 1:2: p = %v, want ~0", p)
	}
	if _, _, err := ChiSquare([]int{1}, []float64{1}); err == nil {
		t.Error("one category accepted")
	}
}
