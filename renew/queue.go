package renew

import (
	"container/heap"
	"time"
)

// Queue orders certificates by the instant their renewal should start.
// It holds one entry per key; pushing a key again moves it. The zero value
// is ready; it is not safe for concurrent use.
type Queue struct {
	items []*item
	byKey map[string]*item
}

type item struct {
	key   string
	start time.Time
	index int
}

// Len is the number of keys queued.
func (q *Queue) Len() int { return len(q.items) }

// Push queues key to start at start, replacing its earlier entry.
func (q *Queue) Push(key string, start time.Time) {
	if q.byKey == nil {
		q.byKey = make(map[string]*item)
	}
	if it, ok := q.byKey[key]; ok {
		it.start = start
		heap.Fix((*itemHeap)(q), it.index)
		return
	}
	it := &item{key: key, start: start}
	q.byKey[key] = it
	heap.Push((*itemHeap)(q), it)
}

// Remove drops key from the queue.
func (q *Queue) Remove(key string) {
	if it, ok := q.byKey[key]; ok {
		heap.Remove((*itemHeap)(q), it.index)
		delete(q.byKey, key)
	}
}

// Start returns when key is queued to start, and whether it is queued.
func (q *Queue) Start(key string) (time.Time, bool) {
	it, ok := q.byKey[key]
	if !ok {
		return time.Time{}, false
	}
	return it.start, true
}

// PopDue removes and returns up to max keys due at now, earliest first,
// each allowed by lim (nil for no limit). It looks at due keys only, so a
// pass over a queue where nothing is due costs nothing per certificate.
func (q *Queue) PopDue(now time.Time, max int, lim *Limiter) []string {
	var keys []string
	for len(keys) < max && len(q.items) > 0 && !q.items[0].start.After(now) {
		if lim != nil && !lim.Allow(now) {
			break
		}
		it := heap.Pop((*itemHeap)(q)).(*item)
		delete(q.byKey, it.key)
		keys = append(keys, it.key)
	}
	return keys
}

// Next returns the earliest start queued, and false if the queue is empty.
func (q *Queue) Next() (time.Time, bool) {
	if len(q.items) == 0 {
		return time.Time{}, false
	}
	return q.items[0].start, true
}

// itemHeap implements heap.Interface over a Queue's items.
type itemHeap Queue

func (h *itemHeap) Len() int           { return len(h.items) }
func (h *itemHeap) Less(i, j int) bool { return h.items[i].start.Before(h.items[j].start) }
func (h *itemHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].index, h.items[j].index = i, j
}
func (h *itemHeap) Push(x any) {
	it := x.(*item)
	it.index = len(h.items)
	h.items = append(h.items, it)
}
func (h *itemHeap) Pop() any {
	old := h.items
	it := old[len(old)-1]
	h.items = old[:len(old)-1]
	return it
}
