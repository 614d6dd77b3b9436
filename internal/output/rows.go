package output

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// reserved are the envelope keys of an NDJSON row object.
var reserved = []string{"type", "tracer", "time", "interval_s"}

// field describes one exported field of a row struct.
type field struct {
	index    []int  // for reflect.Value.FieldByIndex
	key      string // JSON key
	header   string // column header; empty: JSON only
	format   string // printf format for the cell
	numeric  bool   // right-aligned, sorted descending
	sortable bool
}

// schema is the parsed layout of a row struct.
type schema struct {
	typ    reflect.Type
	fields []field
}

// rowStruct returns the struct type behind v: a struct, a pointer to one,
// or a slice of either.
func rowStruct(v any) (reflect.Type, error) {
	t := reflect.TypeOf(v)
	if t == nil {
		return nil, fmt.Errorf("get row type: nil")
	}
	if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("get row type: want a struct or a slice of structs, got %T", v)
	}
	return t, nil
}

// parseSchema reads the json and col tags of t.
func parseSchema(t reflect.Type) (*schema, error) {
	s := &schema{typ: t}
	if err := s.add(t, nil); err != nil {
		return nil, err
	}
	for _, f := range s.fields {
		if slices.Contains(reserved, f.key) {
			return nil, fmt.Errorf("parse row %s: JSON key %q is reserved", t, f.key)
		}
	}
	return s, nil
}

func (s *schema) add(t reflect.Type, index []int) error {
	for i := range t.NumField() {
		sf := t.Field(i)
		idx := append(slices.Clone(index), i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
			// Embedded struct: encoding/json flattens its fields, so do we.
			if err := s.add(sf.Type, idx); err != nil {
				return err
			}
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		f := field{index: idx, key: name}
		kind := sf.Type.Kind()
		if kind == reflect.Pointer { // nil: not measured, printed "-"
			kind = sf.Type.Elem().Kind()
		}
		switch kind {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
			reflect.Float32, reflect.Float64, reflect.Bool:
			f.numeric, f.sortable = true, true
		case reflect.String:
			f.sortable = true
		}
		if col := sf.Tag.Get("col"); col != "" && col != "-" {
			f.header, f.format, _ = strings.Cut(col, ",")
			if f.header == "" {
				return fmt.Errorf("parse col tag of %s.%s: empty header", t, sf.Name)
			}
		}
		if f.format == "" {
			switch kind {
			case reflect.Float32, reflect.Float64:
				f.format = "%.1f"
			default:
				f.format = "%v"
			}
		}
		s.fields = append(s.fields, f)
	}
	return nil
}

// sortKeys lists the JSON keys rows can be sorted by.
func (s *schema) sortKeys() []string {
	var keys []string
	for _, f := range s.fields {
		if f.sortable {
			keys = append(keys, f.key)
		}
	}
	return keys
}

// sortField returns the sortable field with JSON key key.
func (s *schema) sortField(key string) (field, error) {
	for _, f := range s.fields {
		if f.key == key && f.sortable {
			return f, nil
		}
	}
	return field{}, fmt.Errorf("unknown sort key %q: want one of %s", key, strings.Join(s.sortKeys(), ", "))
}

// ValidateSort reports whether key is a JSON key rows of rowType can be
// sorted by; rowType is a row struct, a pointer to one, or a slice of either.
// An empty key is valid (tracer order). The error lists the valid keys.
func ValidateSort(rowType any, key string) error {
	t, err := rowStruct(rowType)
	if err != nil {
		return err
	}
	s, err := parseSchema(t)
	if err != nil {
		return err
	}
	if key == "" {
		return nil
	}
	_, err = s.sortField(key)
	return err
}

// rowValues returns the rows as struct values (pointers dereferenced, nil
// pointers dropped), sorted by key and cut to top, and their schema. The
// schema is nil when rows is an empty value without a type.
func rowValues(rows any, key string, top int) ([]reflect.Value, *schema, error) {
	if rows == nil {
		return nil, nil, nil
	}
	v := reflect.ValueOf(rows)
	if v.Kind() != reflect.Slice && v.Kind() != reflect.Array {
		return nil, nil, fmt.Errorf("read rows: want a slice of structs, got %T", rows)
	}
	t, err := rowStruct(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("read rows: %w", err)
	}
	s, err := parseSchema(t)
	if err != nil {
		return nil, nil, err
	}
	out := make([]reflect.Value, 0, v.Len())
	for i := range v.Len() {
		e := v.Index(i)
		if e.Kind() == reflect.Pointer {
			if e.IsNil() {
				continue
			}
			e = e.Elem()
		}
		out = append(out, e)
	}
	if key != "" {
		f, err := s.sortField(key)
		if err != nil {
			return nil, nil, err
		}
		slices.SortStableFunc(out, func(a, b reflect.Value) int {
			return compare(a.FieldByIndex(f.index), b.FieldByIndex(f.index))
		})
	}
	if top > 0 && len(out) > top {
		out = out[:top]
	}
	return out, s, nil
}

// compare orders numbers and bools descending and strings ascending; a
// nil pointer (not measured) comes after every value.
func compare(a, b reflect.Value) int {
	if a.Kind() == reflect.Pointer {
		switch {
		case a.IsNil() && b.IsNil():
			return 0
		case a.IsNil():
			return 1
		case b.IsNil():
			return -1
		}
		a, b = a.Elem(), b.Elem()
	}
	switch a.Kind() {
	case reflect.String:
		return cmp.Compare(a.String(), b.String())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return cmp.Compare(b.Int(), a.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return cmp.Compare(b.Uint(), a.Uint())
	case reflect.Float32, reflect.Float64:
		return cmp.Compare(b.Float(), a.Float())
	case reflect.Bool:
		return cmp.Compare(boolInt(b.Bool()), boolInt(a.Bool()))
	}
	return 0
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
