package kms

// Wrapper is implemented by a provider that wraps another to add something around its calls
// (metrics, for example) without changing them. A wrapper implements every optional interface
// so that it can pass each on; As tells which the wrapped provider really has.
type Wrapper interface {
	Unwrap() Provider
}

// As returns p as the optional interface T (Importer, Rotator, Tagger, Notifier) when p
// implements it and so does the provider p wraps, if any, else false. Callers look for an
// optional interface through As, never with a type assertion, which a wrapper always passes.
func As[T any](p Provider) (T, bool) {
	var zero T
	t, ok := p.(T)
	if !ok {
		return zero, false
	}
	inner := p
	for {
		w, ok := inner.(Wrapper)
		if !ok {
			break
		}
		inner = w.Unwrap()
		if _, ok := inner.(T); !ok {
			return zero, false
		}
	}
	return t, true
}
