package renew

import (
	"container/heap"
	"time"
)

// Entry is an item's place in a Queue. Embed it in the struct queued; the
// queue allocates nothing per item.
type Entry struct {
	start time.Time
	index int // position in the heap plus one; zero when not queued
}

// Start returns when the item is queued to start.
func (e *Entry) Start() time.Time { return e.start }

// Queued reports whether the item is in a queue.
func (e *Entry) Queued() bool { return e.index > 0 }

// Queued items are the pointers that hold an Entry.
type Queued interface{ entry() *Entry }

func (e *Entry) entry() *Entry { return e }

// Queue orders items by the instant they should start. Pushing an item
// again moves it. The zero value is ready; it is not safe for concurrent
// use.
type Queue[T Queued] struct {
	items []T
}

// Len is the number of items queued.
func (q *Queue[T]) Len() int { return len(q.items) }

// Push queues x to start at start, moving it if it is queued already.
func (q *Queue[T]) Push(x T, start time.Time) {
	e := x.entry()
	e.start = start
	if e.index > 0 {
		heap.Fix((*itemHeap[T])(q), e.index-1)
		return
	}
	heap.Push((*itemHeap[T])(q), x)
}

// Remove takes x out of the queue, if it is queued.
func (q *Queue[T]) Remove(x T) {
	if e := x.entry(); e.index > 0 {
		heap.Remove((*itemHeap[T])(q), e.index-1)
	}
}

// PopDue removes and returns up to max items due at now, earliest first.
// It looks at due items only, so a pass over a queue where nothing is due
// costs nothing per item.
func (q *Queue[T]) PopDue(now time.Time, max int) []T {
	var out []T
	for len(out) < max && len(q.items) > 0 && !q.items[0].entry().start.After(now) {
		out = append(out, heap.Pop((*itemHeap[T])(q)).(T))
	}
	return out
}

// Next returns the earliest start queued, and false if the queue is empty.
func (q *Queue[T]) Next() (time.Time, bool) {
	if len(q.items) == 0 {
		return time.Time{}, false
	}
	return q.items[0].entry().start, true
}

// itemHeap implements heap.Interface over a Queue's items. An Entry's
// index is its heap position plus one, so the zero Entry is "not queued".
type itemHeap[T Queued] Queue[T]

func (h *itemHeap[T]) Len() int { return len(h.items) }
func (h *itemHeap[T]) Less(i, j int) bool {
	return h.items[i].entry().start.Before(h.items[j].entry().start)
}
func (h *itemHeap[T]) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].entry().index, h.items[j].entry().index = i+1, j+1
}
func (h *itemHeap[T]) Push(x any) {
	t := x.(T)
	t.entry().index = len(h.items) + 1
	h.items = append(h.items, t)
}
func (h *itemHeap[T]) Pop() any {
	old := h.items
	t := old[len(old)-1]
	var zero T
	old[len(old)-1] = zero
	h.items = old[:len(old)-1]
	t.entry().index = 0
	return t
}
