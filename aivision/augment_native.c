/* The CPU kernel of aivision.augment: one view per uint8 image, every op of ImageAugment.apply fused per image.
 *
 * Same semantics as the torch path (aivision/augment.py), which stays the reference: bilinear resampling of each
 * image's box (grid_sample, align_corners=False, border padding), mirrored where flipped; colour jitter in each
 * image's own order (brightness, contrast, saturation, hue, each clamped to [0, 1]); grayscale; Gaussian blur with the
 * image's own sigma (radius ceil(3 sigma), reflect padding); solarisation; normalisation. Each image's working set
 * (its source, its view and one scratch plane) stays in the core's cache, instead of some thirty passes over whole
 * batches in memory. The caller parallelises over images (one call per thread on a slice of the batch).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static const float GRAY_R = 0.2989f, GRAY_G = 0.587f, GRAY_B = 0.114f;

static inline float clamp01(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }
static inline float larger(float a, float b) { return a > b ? a : b; }
static inline float smaller(float a, float b) { return a < b ? a : b; }

/* Source coordinate of each output pixel along one axis, as grid_sample computes it (align_corners=False, border):
 * low index, high index and the weight of the high one. */
static void axis_taps(float start, float extent, int64_t length, int64_t size, float sign, int32_t* low,
                      int32_t* high, float* weight) {
    const float centre = (start + extent / 2.f) / (float)length * 2.f - 1.f;
    const float scale = extent / (float)length * sign;
    for (int64_t j = 0; j < size; j++) {
        const float step = ((float)j + 0.5f) / (float)size * 2.f - 1.f;
        float coordinate = (((centre + scale * step) + 1.f) * (float)length - 1.f) / 2.f;
        coordinate = coordinate < 0.f ? 0.f : (coordinate > (float)(length - 1) ? (float)(length - 1) : coordinate);
        const float floor_ = floorf(coordinate);
        low[j] = (int32_t)floor_;
        high[j] = low[j] + 1 < length ? low[j] + 1 : (int32_t)(length - 1);
        weight[j] = coordinate - floor_;
    }
}

/* The box of one image [3, H, W] resampled to [3, size, size] floats in [0, 1]. */
static void sample(const uint8_t* image, int64_t height, int64_t width, const float* box, int flip, int64_t size,
                   float* out, int32_t* taps, float* weights, float* line) {
    int32_t *x_low = taps, *x_high = taps + size, *y_low = taps + 2 * size, *y_high = taps + 3 * size;
    float *x_weight = weights, *y_weight = weights + size;
    axis_taps(box[1], box[3], width, size, flip ? -1.f : 1.f, x_low, x_high, x_weight);
    axis_taps(box[0], box[2], height, size, 1.f, y_low, y_high, y_weight);
    int32_t first = x_low[0], last = x_high[0];
    for (int64_t j = 1; j < size; j++) {
        first = x_low[j] < first ? x_low[j] : first;
        last = x_high[j] > last ? x_high[j] : last;
    }
    const float unit = 1.f / 255.f;
    for (int c = 0; c < 3; c++) {
        const uint8_t* plane = image + c * height * width;
        float* target = out + c * size * size;
        for (int64_t i = 0; i < size; i++) {
            const uint8_t* upper = plane + (int64_t)y_low[i] * width;
            const uint8_t* lower = plane + (int64_t)y_high[i] * width;
            const float wy = y_weight[i];
            for (int32_t x = first; x <= last; x++)  /* the two source rows blended: vectorised */
                line[x] = ((1.f - wy) * (float)upper[x] + wy * (float)lower[x]) * unit;
            float* row = target + i * size;
            for (int64_t j = 0; j < size; j++)
                row[j] = (1.f - x_weight[j]) * line[x_low[j]] + x_weight[j] * line[x_high[j]];
        }
    }
}

static void brightness(float* x, int64_t count, float factor) {
    for (int64_t k = 0; k < count; k++) x[k] = clamp01(x[k] * factor);
}

static void contrast(float* r, float* g, float* b, int64_t count, float factor) {
    double total = 0.0;  /* blocks of 256 summed in 16 float lanes (vectorised), the blocks in double */
    for (int64_t start = 0; start < count; start += 256) {
        const int64_t stop = start + 256 < count ? start + 256 : count;
        float lanes[16] = {0.f};
        int64_t k = start;
        for (; k + 16 <= stop; k += 16)
            for (int l = 0; l < 16; l++) lanes[l] += GRAY_R * r[k + l] + GRAY_G * g[k + l] + GRAY_B * b[k + l];
        for (; k < stop; k++) total += GRAY_R * r[k] + GRAY_G * g[k] + GRAY_B * b[k];
        for (int l = 0; l < 16; l++) total += lanes[l];
    }
    const float mean = (float)(total / (double)count);
    const float offset = (1.f - factor) * mean;
    for (int64_t k = 0; k < 3 * count; k++) r[k] = clamp01(factor * r[k] + offset);  /* the planes are adjacent */
}

static void saturation(float* restrict r, float* restrict g, float* restrict b, int64_t count, float factor) {
    const float rest = 1.f - factor;
    for (int64_t k = 0; k < count; k++) {
        const float gray = GRAY_R * r[k] + GRAY_G * g[k] + GRAY_B * b[k];
        r[k] = clamp01(factor * r[k] + rest * gray);
        g[k] = clamp01(factor * g[k] + rest * gray);
        b[k] = clamp01(factor * b[k] + rest * gray);
    }
}

static inline float floor_mod6(float v) { return v - 6.f * floorf(v / 6.f); }

static inline float hue_ramp(float hue6, float n) {
    const float k = floor_mod6(hue6 + n);
    const float m = k < 4.f - k ? k : 4.f - k;
    return clamp01(m);
}

/* Hue rotated by `shift` turns, as an HSV round trip: each pixel keeps its largest and smallest channel. */
static void hue(float* restrict r, float* restrict g, float* restrict b, int64_t count, float shift) {
    const float turn = 6.f * (shift - floorf(shift));
    for (int64_t k = 0; k < count; k++) {
        const float red = r[k], green = g[k], blue = b[k];
        const float maxc = larger(larger(red, green), blue), minc = smaller(smaller(red, green), blue);
        const float span = maxc - minc;
        const float inverse = 1.f / (span > 1e-12f ? span : 1e-12f);
        const float from_red = floor_mod6((green - blue) * inverse);
        const float from_green = (blue - red) * inverse + 2.f, from_blue = (red - green) * inverse + 4.f;
        float hue6 = red == maxc ? from_red : (green == maxc ? from_green : from_blue);
        hue6 = (span > 0.f ? hue6 : 0.f) + turn;
        r[k] = maxc - span * hue_ramp(hue6, 5.f);
        g[k] = maxc - span * hue_ramp(hue6, 3.f);
        b[k] = maxc - span * hue_ramp(hue6, 1.f);
    }
}

static void to_grayscale(float* restrict r, float* restrict g, float* restrict b, int64_t count) {
    for (int64_t k = 0; k < count; k++) {
        const float gray = GRAY_R * r[k] + GRAY_G * g[k] + GRAY_B * b[k];
        r[k] = gray;
        g[k] = gray;
        b[k] = gray;
    }
}

static inline int64_t reflect(int64_t i, int64_t length) {
    return i < 0 ? -i : (i >= length ? 2 * (length - 1) - i : i);
}

enum { BLOCK = 64 };  /* outputs per accumulator block: held in registers across the taps */

/* out[j] = sum_t kernel[t] * source[j + t * stride] for j < length; reads up to BLOCK - 1 past the last output. */
static inline void taps_sum(const float* restrict source, int64_t stride, const float* restrict kernel, int64_t taps,
                            int64_t length, float* restrict out) {
    for (int64_t start = 0; start < length; start += BLOCK) {
        float acc[BLOCK] = {0.f};
        for (int64_t t = 0; t < taps; t++) {
            const float tap = kernel[t];
            const float* row = source + start + t * stride;
            for (int l = 0; l < BLOCK; l++) acc[l] += tap * row[l];
        }
        const int64_t count = length - start < BLOCK ? length - start : BLOCK;
        for (int64_t l = 0; l < count; l++) out[start + l] = acc[l];
    }
}

/* Separable Gaussian blur of one plane in place (rows, then columns), reflect padding. `scratch` holds a plane and
 * BLOCK more floats, `padded` a row, twice the radius and BLOCK more. */
static void blur_plane(float* plane, int64_t size, const float* kernel, int64_t radius, float* scratch,
                       float* padded) {
    const int64_t taps = 2 * radius + 1;
    for (int64_t i = 0; i < size; i++) {
        const float* row = plane + i * size;
        for (int64_t x = -radius; x < size + radius; x++) padded[x + radius] = row[reflect(x, size)];
        taps_sum(padded, 1, kernel, taps, size, scratch + i * size);
    }
    for (int64_t i = 0; i < size; i++) {
        /* rows i - radius .. i + radius of the row pass, reflected at the edges: contiguous away from them */
        if (i >= radius && i + radius < size) {
            taps_sum(scratch + (i - radius) * size, size, kernel, taps, size, plane + i * size);
        } else {
            float* target = plane + i * size;
            for (int64_t j = 0; j < size; j++) target[j] = 0.f;
            for (int64_t t = 0; t < taps; t++) {
                const float tap = kernel[t];
                const float* source = scratch + reflect(i + t - radius, size) * size;
                for (int64_t j = 0; j < size; j++) target[j] += tap * source[j];
            }
        }
    }
}

/* ceil(3 sigma), at least 1, at most (size - 1) / 2 (as blur_radius in augment.py). */
static int64_t blur_radius(float sigma, int64_t size) {
    int64_t radius = (int64_t)ceilf(3.f * sigma);
    radius = radius < 1 ? 1 : radius;
    const int64_t largest = (size - 1) / 2 < 1 ? 1 : (size - 1) / 2;
    return radius < largest ? radius : largest;
}

static void blur(float* view, int64_t size, float sigma, float* scratch, float* padded, float* kernel) {
    if (size < 2) return;
    const int64_t radius = blur_radius(sigma, size);
    float total = 0.f;
    for (int64_t t = 0; t <= 2 * radius; t++) {
        const float offset = (float)(t - radius) / sigma;
        kernel[t] = expf(-0.5f * offset * offset);
        total += kernel[t];
    }
    for (int64_t t = 0; t <= 2 * radius; t++) kernel[t] /= total;
    for (int c = 0; c < 3; c++) blur_plane(view + c * size * size, size, kernel, radius, scratch, padded);
}

/* Views of `batch` uint8 images [batch, 3, height, width] into `out` [batch, 3, size, size] (normalised floats).
 * Per image: box (top, left, h, w), flags (flip, jitter, grayscale, blur, solarize), jitter factors (brightness,
 * contrast, saturation, hue shift) and order (a permutation of 0-3), blur sigma. Returns 0, or -1 when out of
 * memory. */
int augment_views(const uint8_t* images, int64_t batch, int64_t height, int64_t width, int64_t size,
                  const float* boxes, const uint8_t* flip, const uint8_t* jitter, const float* factors,
                  const int64_t* order, const uint8_t* grayscale, const uint8_t* blurred, const float* sigma,
                  const uint8_t* solarize, const float* mean, const float* std, float* out) {
    const int64_t count = size * size;
    const int64_t line_length = width > size ? width : size;
    int32_t* taps = malloc(sizeof(int32_t) * 4 * size);
    float* weights = malloc(sizeof(float) * 2 * size);
    float* line = calloc(line_length + 2 * size + BLOCK, sizeof(float));  /* zeroed: blocks read past the ends */
    float* scratch = calloc(count + BLOCK, sizeof(float));
    float* kernel = malloc(sizeof(float) * (size + 1));
    if (!taps || !weights || !line || !scratch || !kernel) {
        free(taps); free(weights); free(line); free(scratch); free(kernel);
        return -1;
    }
    for (int64_t n = 0; n < batch; n++) {
        float* view = out + n * 3 * count;
        float *r = view, *g = view + count, *b = view + 2 * count;
        sample(images + n * 3 * height * width, height, width, boxes + 4 * n, flip[n], size, view, taps, weights,
               line);
        if (jitter[n]) {
            const float* f = factors + 4 * n;
            for (int position = 0; position < 4; position++) {
                switch (order[4 * n + position]) {
                    case 0: brightness(view, 3 * count, f[0]); break;
                    case 1: contrast(r, g, b, count, f[1]); break;
                    case 2: saturation(r, g, b, count, f[2]); break;
                    default: hue(r, g, b, count, f[3]); break;
                }
            }
        }
        if (grayscale[n]) to_grayscale(r, g, b, count);
        if (blurred[n]) blur(view, size, sigma[n], scratch, line, kernel);
        for (int c = 0; c < 3; c++) {
            float* plane = view + c * count;
            const float shift = mean[c], inverse = 1.f / std[c];
            if (solarize[n])
                for (int64_t k = 0; k < count; k++) plane[k] = plane[k] >= 0.5f ? 1.f - plane[k] : plane[k];
            for (int64_t k = 0; k < count; k++) plane[k] = (plane[k] - shift) * inverse;
        }
    }
    free(taps); free(weights); free(line); free(scratch); free(kernel);
    return 0;
}
