"""lesionforge.gan: generators that learn to synthesize labelled lesion CT slices."""
